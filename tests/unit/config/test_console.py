"""quiet_console in a fresh interpreter, where Lightning is first imported after it is called (as in `make demo`)."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import logging
    logging.basicConfig(level=logging.INFO, format="[bireco] %(message)s")
    from bireco.config.cli import quiet_console
    quiet_console()
    import lightning.pytorch as pl
    pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    logging.getLogger("lightning.pytorch.some_module").warning("a warning from lightning")
    import warnings
    warnings.warn("The `get_sentence_embedding_dimension` method has been renamed", FutureWarning)
    """
)


def test_quiet_console_silences_lightning_info_and_prints_its_warnings_once():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True
    )
    console = out.stdout + out.stderr
    assert "GPU available" not in console, console
    assert "Tip" not in console, console
    assert console.count("a warning from lightning") == 1, console
    assert "[bireco] a warning from lightning" in console, console
    assert "get_sentence_embedding_dimension" not in console, console
