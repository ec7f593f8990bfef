"""The models of a folder by name: each ONNX file is one model, named from its metadata.

A file that does not open or does not state the contract's metadata costs only itself: it
is skipped with its cause. Two files that give one name: the first (by file name) serves,
the other is skipped, since a name must pick one model. No ONNX Runtime session is kept
here; the engine makes the sessions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from model import contract

log = logging.getLogger("app.runtime.registry")


@dataclass(frozen=True)
class ModelFile:
    path: Path
    descriptor: contract.ModelDescriptor

    @property
    def name(self) -> str:
        return self.descriptor.name


@dataclass
class ModelInfo:
    """A loaded model: what its file states and where it really runs."""

    path: Path
    descriptor: contract.ModelDescriptor
    provider: str  # where it really runs, as its runtime reports it
    engine: str = "onnxruntime"  # the runtime chosen at warm-up
    precision: str = "fp32"
    trials: list[dict] = field(default_factory=list)  # every candidate's warm-up result
    notes: list[str] = field(default_factory=list)  # why other runtimes were no candidates

    @property
    def name(self) -> str:
        return self.descriptor.name

    @property
    def scale(self) -> int:
        return self.descriptor.scale

    @property
    def preset(self) -> str:
        return self.descriptor.preset

    @property
    def arch(self) -> str:
        return self.descriptor.arch

    @property
    def kind(self) -> str:
        return self.descriptor.kind

    @property
    def strength(self) -> str:
        return self.descriptor.strength

    def card(self) -> dict[str, str]:
        return dict(self.descriptor.card)


def cause_of(err: BaseException, path: Path) -> str:
    """The loader's own message, with this machine's folders cut down to the file name."""
    if isinstance(err, contract.ContractError):
        return str(err)
    return str(err).replace(str(path), path.name).replace(str(path.parent), ".")


def read_metadata(path: Path) -> dict[str, str]:
    import onnxruntime as ort  # only here: the registry's naming needs no session

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def discover(model_dir: Path, failed: dict[str, str] | None = None) -> list[ModelFile]:
    """Every usable ONNX file of the folder, by file name; causes of the others in `failed`
    (file name -> cause)."""
    found: dict[str, ModelFile] = {}
    for path in sorted(Path(model_dir).glob("*.onnx")):
        try:
            entry = ModelFile(path, contract.describe(read_metadata(path)))
            if entry.name in found:
                raise contract.ContractError(
                    f"model name {entry.name} is already served by {found[entry.name].path.name}")
        except Exception as err:
            cause = cause_of(err, path)
            log.error("skipping model %s: %s", path.name, cause,
                      extra={"fields": {"file": path.name, "cause": cause}})
            if failed is not None:
                failed[path.name] = cause
            continue
        found[entry.name] = entry
    return list(found.values())


def wanted_preset(preset: str, on_gpu: bool) -> str:
    """The preset `auto` means on this device: the full network on a GPU, lite on the CPU."""
    return preset if preset != "auto" else ("lsrcnn" if on_gpu else "lsrcnn-lite")


def pick(models: list[ModelInfo] | list[ModelFile], scale: int, preset: str, on_gpu: bool,
         kind: str = contract.CLEAN, strength: str = "") -> str | None:
    """The name of the model that serves `scale` when a request names none: of the wanted
    kind (a clean model where there is none of it: a folder of photo models alone still
    serves) and, for photo models, of the wanted strength where the scale has one, else
    the general photo model, else any; the wanted preset where there is one, else the
    first; None if the scale has no model, or `kind` is photo and the scale has no photo
    model."""
    of_scale = [m for m in models if m.descriptor.scale == scale]
    of_kind = [m for m in of_scale if m.descriptor.kind == kind]
    if not of_kind and kind == contract.CLEAN:
        of_kind = of_scale
    if kind == contract.PHOTO:
        for want in dict.fromkeys((strength, "")):
            exact = [m for m in of_kind if m.descriptor.strength == want]
            if exact:
                of_kind = exact
                break
    wanted = wanted_preset(preset, on_gpu)
    for m in of_kind:
        if m.descriptor.preset == wanted:
            return m.name
    return of_kind[0].name if of_kind else None


def find(model_dir: Path, scale: int, preset: str = "lsrcnn-lite") -> ModelFile:
    """The file of a folder that serves `scale` with `preset` (benchmarks, evaluation)."""
    models = discover(model_dir)
    name = pick(models, scale, preset, on_gpu=False)
    if name is None:
        raise FileNotFoundError(f"no x{scale} model in {model_dir}")
    return next(m for m in models if m.name == name)
