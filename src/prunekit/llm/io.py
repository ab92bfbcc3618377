"""Loading models from a local directory and saving pruned ones (safetensors + masks + report).

A Hugging Face directory (``config.json``) loads with ``from_pretrained``; prunekit's GPT is stored
as ``model.safetensors`` whose metadata holds its config. Nothing is ever downloaded, and code
shipped in a model directory (``auto_map`` + ``.py`` files) never runs unless the caller passes
``trust_remote_code=True``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from torch import nn

from prunekit.core.errors import FileFormatError
from prunekit.core.masks import MaskSet
from prunekit.core.report import sparsity_report
from prunekit.core.safety import UnsafeFileError
from prunekit.core.serialization import (
    TMP_PREFIX,
    TMP_SUFFIX,
    atomic_path,
    check_state_fits,
    check_write_path,
    clean_stale_temps,
    file_mode,
    load_safetensors,
    make_dirs,
    save_safetensors,
    write_json,
)

__all__ = [
    "copy_source_files",
    "load_model",
    "load_pruned",
    "save_pruned",
    "tokenizer_files",
]

GPT_FORMAT = "prunekit.gpt/1"
MASKS_FILE = "masks.safetensors"
REPORT_FILE = "sparsity_report.json"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "loading Hugging Face models needs transformers: pip install 'prunekit[llm]'"
        ) from err
    return transformers


def _remote_code_error(err: ValueError, config_file: Path, trust: bool) -> ValueError:
    """transformers' refusal to run shipped code, as one line naming the file; else ``err``."""
    if trust or "trust_remote_code" not in str(err):
        return err
    return UnsafeFileError(
        f"{config_file}: the model needs Python code shipped in its folder, which prunekit "
        "never runs unless asked (--trust-remote-code / trust_remote_code=True)"
    )


def load_model(
    path: str | os.PathLike, dtype: Any = None, *, trust_remote_code: bool = False
) -> tuple[nn.Module, Any]:
    """(model, tokenizer or None) from a local directory; never downloads.

    ``trust_remote_code`` is passed to transformers' config, model and tokenizer loaders; it is
    ``False`` unless the caller says otherwise, so ``.py`` files in ``path`` are never run.

    Raises:
        FileNotFoundError: ``path`` is not a directory holding a model.
        UnsafeFileError: ``config.json`` names an architecture that is not a transformers model
            class (and ``trust_remote_code`` is off).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"model: no such directory {str(root)!r}")
    gpt_file = root / "model.safetensors"
    if not (root / "config.json").exists() and gpt_file.exists():
        from prunekit.models.gpt import GPT, GPTConfig

        tensors, meta = load_safetensors(gpt_file)
        if meta.get("format") != GPT_FORMAT:
            raise FileFormatError(gpt_file, "not a prunekit GPT checkpoint")
        config = meta.get("config")
        try:
            model = GPT(GPTConfig(**config))
        except (TypeError, ValueError, RuntimeError, OverflowError) as err:
            raise FileFormatError(
                gpt_file, f"metadata key 'config' is not a GPT config: {err}"
            ) from None
        check_state_fits(model, tensors, gpt_file)
        model.load_state_dict(tensors)
        if dtype is not None:
            model.to(dtype)
        return model.eval(), None
    if not (root / "config.json").exists():
        raise FileNotFoundError(f"model: {str(root)!r} holds no config.json or model.safetensors")
    transformers = _transformers()
    trust = bool(trust_remote_code)
    config_file = root / "config.json"
    try:
        config = transformers.AutoConfig.from_pretrained(
            root, local_files_only=True, trust_remote_code=trust
        )
    except ValueError as err:
        raise _remote_code_error(err, config_file, trust) from None
    cls = None
    for arch in getattr(config, "architectures", None) or []:
        found = getattr(transformers, arch, None) if isinstance(arch, str) else None
        if isinstance(found, type) and issubclass(found, transformers.PreTrainedModel):
            cls = found
            break
    if cls is None:
        cls = transformers.AutoModelForCausalLM
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model = cls.from_pretrained(root, **kwargs)
    except SafetensorError as err:  # a truncated or corrupt weights file: name the folder
        raise FileFormatError(root, f"corrupt or truncated *.safetensors weights: {err}") from None
    except ValueError as err:
        raise _remote_code_error(err, config_file, trust) from None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            root, local_files_only=True, trust_remote_code=trust
        )
    except Exception:  # a model directory without (usable) tokenizer files
        tokenizer = None
    return model.eval(), tokenizer


def _save_model(model: nn.Module, directory: Path) -> None:
    from prunekit.models.gpt import GPT

    if isinstance(model, GPT):
        state = {k: v for k, v in model.state_dict().items()}
        save_safetensors(
            state,
            directory / "model.safetensors",
            {"format": GPT_FORMAT, "config": model.config.to_dict()},
        )
        return
    if not hasattr(model, "save_pretrained"):
        raise TypeError(
            f"model: {type(model).__name__} has no save_pretrained; save its state_dict yourself"
        )
    model.save_pretrained(directory)


def save_pruned(
    model: nn.Module,
    directory: str | os.PathLike,
    masks: MaskSet | None = None,
    report: dict | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write the model (safetensors), its tokenizer, ``masks.safetensors`` and
    ``sparsity_report.json`` into ``directory``; files appear only once fully written."""
    target = make_dirs(directory)
    clean_stale_temps(target)  # left by an earlier save that was killed
    # A fresh folder of prunekit's temp naming: transformers writes only inside it.
    staging = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + "save-", suffix=TMP_SUFFIX, dir=target))
    try:
        _save_model(model, staging)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(staging)
        items = sorted(staging.iterdir())
        for item in items:  # check every target before publishing any
            if item.is_symlink() or not item.is_file():
                raise UnsafeFileError(f"refusing to publish {str(item)!r}: not a plain file")
            check_write_path(target / item.name)
        for item in items:
            os.chmod(item, file_mode())  # as open() would; the staging folder is private
            os.replace(item, check_write_path(target / item.name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    data: dict[str, Any] = {"pruning": report or {}}
    if masks is not None:
        masks.save(target / MASKS_FILE, metadata=masks.metadata)
        data["weights"] = sparsity_report(model, masks).to_dict()
    else:
        data["weights"] = sparsity_report(model).to_dict()
    write_json(data, target / REPORT_FILE)
    return target


def load_pruned(
    directory: str | os.PathLike, dtype: Any = None, *, trust_remote_code: bool = False
) -> tuple[nn.Module, MaskSet | None, Any]:
    """(model, masks or None, tokenizer or None) from a directory written by :func:`save_pruned`
    (``trust_remote_code`` as in :func:`load_model`)."""
    model, tokenizer = load_model(directory, dtype, trust_remote_code=trust_remote_code)
    path = Path(directory) / MASKS_FILE
    masks = MaskSet.load(path) if path.exists() else None
    if masks is not None:
        try:
            masks.validate(model)
        except ValueError as err:
            raise FileFormatError(path, f"does not fit the model: {err}") from None
    return model, masks, tokenizer


# Files that hold a tokenizer's vocabulary (tokenizer_config.json alone holds none).
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# The model's own weights, which the pruned model replaces.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


def tokenizer_files(path: str | os.PathLike) -> list[str]:
    """Names of the vocabulary files (``tokenizer.json``, ``vocab.txt`` ...) in a model folder."""
    root = Path(path)
    return [name for name in TOKENIZER_FILES if (root / name).is_file()]


def _is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json")


def copy_source_files(source: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    """Copy what a model folder holds besides its weights into ``target``; the names copied.

    Top-level weight files (``*.safetensors``, ``*.bin`` ... and their ``*.index.json``) are
    left out: the pruned model replaces them. Everything else is copied, sub-folders whole
    (a sentence-transformers ``modules.json``, ``1_Pooling/``, ``2_Normalize/``,
    ``sentence_bert_config.json``, a README ...), so the output stays the kind of model the
    source was. Nothing that already exists in ``target`` is overwritten (what prunekit wrote
    wins), hidden entries and broken links are skipped, ``target`` itself is skipped when it lies
    inside ``source``, and each entry appears only once fully copied. Symbolic links (a Hugging
    Face cache snapshot is made of them) are copied as the files they point to: the output never
    holds a link.
    """
    src, dst = Path(source).resolve(), Path(target).resolve()
    copied = []
    for item in sorted(src.iterdir()):
        if item.name.startswith(".") or not item.exists() or (dst / item.name).exists():
            continue
        if item.resolve() == dst or dst.is_relative_to(item.resolve()):
            continue
        if item.is_file() and not _is_weight_file(item.name):
            with atomic_path(dst / item.name) as tmp:
                shutil.copyfile(item, tmp)
        elif item.is_dir():
            staging = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=dst))
            try:
                # copyfile, not copy2: files get the umask's mode, never the source's bits
                shutil.copytree(item, staging / item.name, symlinks=False, ignore=_skip_broken,
                                copy_function=shutil.copyfile)  # fmt: skip
                os.replace(staging / item.name, check_write_path(dst / item.name))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        else:
            continue
        copied.append(item.name)
    return copied


def _skip_broken(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if not os.path.exists(os.path.join(directory, n))]
