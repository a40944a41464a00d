"""Shared start-up of the entry points: fail fast on a misspelt override with the valid keys, free text quoted
for Hydra, a bad input ended in one line, a quiet console."""

from __future__ import annotations

import difflib
import functools
import logging
import re
import sys
import warnings

from omegaconf import DictConfig, OmegaConf

from bireco.core.errors import USER_ERRORS

__all__ = [
    "check_overrides",
    "exit_on_user_error",
    "quiet_console",
    "quote_free_text",
    "suggest_key",
]


def quote_free_text(args: list[str], keys: tuple[str, ...]) -> list[str]:
    """`key=any text` -> `key='any text'`, so Hydra reads commas, brackets and "=" in free text literally, not as a
    sweep or a list (`text="a dog, with a long snout"` reaches us without its shell quotes). Already quoted values
    are left alone."""
    out = []
    for a in args:
        key, sep, value = a.partition("=")
        if sep and key in keys and not (len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""):
            a = f"{key}='" + value.replace("'", "\\'") + "'"
        out.append(a)
    return out


# Hydra's flags that take the next argument, and those that make the command do something other than run the job
VALUE_FLAGS = {"-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun"}
NOT_A_RUN = {
    "-sc",
    "--shell-completion",
    "-h",
    "--help",
    "-hh",
    "--hydra-help",
    "-i",
    "--info",
    "-c",
    "--cfg",
}


def first_values(args: list[str]) -> list[str] | None:
    """Overrides with every sweep reduced to its first value (enough to check keys); None if unparsable."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    plain, skip = [], False
    for a in args:
        if skip:  # the value of a Hydra flag (--config-name NAME ...), not an override
            skip = False
        elif a in VALUE_FLAGS:
            skip = True
        elif not a.startswith("-") and "=" in a and not a.lstrip("+~").startswith("hydra"):
            plain.append(a)
    try:
        parsed = OverridesParser.create().parse_overrides(plain)
    except Exception:
        return None  # Hydra reports syntax errors itself
    out = []
    for o in parsed:
        if o.is_sweep_override():
            first = next(iter(o.sweep_string_iterator()), None)
            if first is None:
                continue
            out.append(f"{o.get_key_element()}={first}")
        else:
            out.append(o.input_line)
    return out


def check_overrides(config_name: str, args: list[str]) -> None:
    """Compose once with the user's overrides; an unknown key exits with the valid keys at that level."""
    from hydra.errors import ConfigCompositionException

    from bireco.config.compose import compose

    if NOT_A_RUN & set(args):  # tab completion (`-sc query=bash`), --help, --cfg: Hydra handles them itself
        return
    overrides = first_values(args)
    if overrides is None:
        return
    try:
        compose(overrides, config_name)
    except ConfigCompositionException as err:
        text = str(err) + " " + str(err.__cause__ or "")
        bad = re.search(r"Invalid value '([^']*)', expected one of \[([^\]]*)\]\s+full_key: (\S+)", text)
        if bad:  # a value outside a closed set (an Enum field of the schema)
            value, choices, key = bad.groups()
            sys.exit(f"Error: {key}={value}: choose one of {choices}")
        m = re.search(r"Could not override '([^']+)'", text) or re.search(r"full_key: (\S+)", text)
        if not m or not re.search(r"not in struct|Key .* not in|not found", text):
            return  # group typos etc.: Hydra's own message already lists the options
        key = m.group(1)
        rest = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~") == key]
        try:
            base = compose(rest, config_name)
        except Exception:
            return
        OmegaConf.set_struct(base, False)
        sys.exit(f"Error: {suggest_key(base, key)}")


def exit_on_user_error(fn):
    """Run an entry point's body; a bad input (user_error) ends it with one line `Error: ...` and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            user = user_error(err)
            if user is None:
                raise
            sys.exit(f"Error: {user}")

    return wrapper


def user_error(err: BaseException) -> BaseException | None:
    """The bad-input error (ConfigError, or a DataError naming file:line: field) behind `err`, if any: libraries
    such as `datasets` wrap what the record checks raise."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, USER_ERRORS):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def suggest_key(cfg: DictConfig, dotted: str) -> str:
    """Message for an unknown key: lists the valid keys at that level and the closest match."""
    parent_path, _, leaf = dotted.rpartition(".")
    node = OmegaConf.select(cfg, parent_path) if parent_path else cfg
    if not OmegaConf.is_dict(node):
        return f"unknown config key {dotted!r}"
    valid = sorted(str(k) for k in node.keys())
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f" Did you mean {(parent_path + '.' if parent_path else '') + close[0]!r}?" if close else ""
    return f"unknown config key {dotted!r}.{hint} Valid keys under {parent_path or '<root>'!r}: {', '.join(valid)}"


def quiet_console() -> None:
    """A clean console: our own progress and results, not library tips and known deprecation chatter.

    Lightning sets its loggers to INFO when it is imported, so it is imported first (else a later import undoes the
    levels set here), and the `lightning` package's own console handler is dropped where the root logger has one:
    with both, every Lightning line was printed twice (`INFO: ...` and `[bireco] ...`)."""
    import lightning.fabric  # noqa: F401
    import lightning.pytorch  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if logging.getLogger().hasHandlers():
        package = logging.getLogger("lightning")
        for handler in list(package.handlers):
            package.removeHandler(handler)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    # mteb's ModelMeta still calls sentence-transformers' old name for the embedding size (twice per reference model)
    warnings.filterwarnings("ignore", message=".*get_sentence_embedding_dimension.*", category=FutureWarning)
    # wrong for bireco on resume: the data module restores the sampler position (PairDataModule.state_dict)
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
