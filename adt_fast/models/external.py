"""Models built by your own code: build one from an importable factory, load its weights safely,
wrap it so that it takes inputs in [0, 1] when it was trained on normalised ones, and train one
(a factory spec as the classifier's arch, recorded in its checkpoints).

    load_external_model("torchvision.models:resnet18", "weights.pt", mean=..., std=...)

Weights are read with torch.load(weights_only=True): a file that needs arbitrary unpickling is
refused. Every failure raises ExternalModelError with a message that says what went wrong, a
sys.exit() in your code included.
"""

from __future__ import annotations

import ast
import copy
import importlib
import os
import pickle
import re
import sys
import zipfile
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from ..checks import unreadable_tensor_problem
from ..files import zip_damage
from .classifiers import Classifier, build_model
from .modes import module_mode

# Wrappers that training scripts commonly put around a state dict.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
# Prefixes that wrapping a model puts on every key of its state dict (DDP/DataParallel, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Where a classifier built by a factory for training keeps what a built-in one keeps in .config
# (its arch, classes, channels, image size). Not .config: the user's model may have its own.
CONFIG_ATTRIBUTE = "adt_fast_config"


class ExternalModelError(ValueError):
    """The factory, the weights or the normalisation cannot give a usable model."""


# A model of fewer than 2 logits is no classifier the attacks can score: argmax over one logit is
# always class 0, so every example of class 0 would count as robust under every attack.
TOO_FEW_LOGITS = ("a classifier needs at least 2 logits per input (argmax over a single logit is always class 0, "
                  "so every example of class 0 would count as robust); for a binary model with one logit z, "
                  "return torch.cat([-z, z], dim=1) / 2, whose softmax is sigmoid(z)")


def raised(err: BaseException) -> str:
    """What your code raised, for a message: its type and text; a SystemExit (sys.exit(), exit(), an
    argparse parser refusing a command line) as the call, since escaping the command's error handling
    it would end the command with no word, and with exit code 0 for sys.exit(0) as if it had worked."""
    if isinstance(err, SystemExit):
        return f"it called sys.exit({'' if err.code is None else repr(err.code)})"
    return f"{type(err).__name__}: {err}"


def has_feature_split(model: nn.Module) -> bool:
    """Whether model has FeaAttack's .features(x) / .head(features) split."""
    return callable(getattr(model, "features", None)) and callable(getattr(model, "head", None))


class Normalized(nn.Module):
    """model((x - mean) / std) per channel (dim 1), so attacks can work on inputs in [0, 1].

    A wrapped model's .features / .head split (FeaAttack's) is kept: the constructor then
    returns a :class:`NormalizedFeatureSplit`, so that a model without the split still has none.
    """

    def __new__(cls, model: Optional[nn.Module] = None, *args, **kwargs):
        # Unpickling and deepcopy call __new__ with no arguments on the class already chosen.
        if cls is Normalized and has_feature_split(model):
            cls = NormalizedFeatureSplit
        return super().__new__(cls)

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != len(self.mean):
            raise ValueError(f"the normalisation has {len(self.mean)} channels but the input has "
                             f"shape {tuple(x.shape)} (channels on dim 1)")
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape).to(x.dtype)) / self.std.view(shape).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._normalise(x))


class NormalizedFeatureSplit(Normalized):
    """A :class:`Normalized` model whose wrapped model has the .features / .head split."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(self._normalise(x))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.head(features)


def check_normalisation(mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> None:
    if (mean is None) != (std is None):
        raise ExternalModelError("mean and std go together: give both or neither")
    if mean is None:
        return
    if len(mean) == 0 or len(mean) != len(std):
        raise ExternalModelError(f"mean and std need one value per channel, the same number of "
                                 f"each; got {len(mean)} and {len(std)}")
    if any(not (s > 0) or s == float("inf") for s in std):
        raise ExternalModelError(f"std values must be finite and > 0, got {list(std)}")


def _factory_arguments(spec: str) -> tuple[str, tuple, dict]:
    """"module:factory(3, num_classes=10)" -> ("module:factory", (3,), {"num_classes": 10}).

    Arguments must be Python literals (ast.literal_eval): a spec never runs code of its own."""
    name, paren, rest = spec.partition("(")
    if not paren:
        return spec, (), {}
    if not rest.endswith(")"):
        raise ExternalModelError(f"{spec!r}: arguments go in parentheses at the end, as in "
                                 f"mypackage.models:build(num_classes=10)")
    try:
        call = ast.parse(f"f({rest}", mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "f"):
            raise ValueError("the arguments must close the spec, as one call")
        if any(k.arg is None for k in call.keywords) or any(isinstance(a, ast.Starred) for a in call.args):
            raise ValueError("* and ** are not literals")
        args = tuple(_literal(a) for a in call.args)
        kwargs = {k.arg: _literal(k.value) for k in call.keywords}
    except (SyntaxError, ValueError) as err:
        raise ExternalModelError(f"{spec!r}: the factory's arguments must be Python literals "
                                 f"(numbers, strings, True/False/None, tuples, lists, dicts): {err}") from None
    return name, args, kwargs


def _literal(node: ast.expr):
    try:
        return ast.literal_eval(node)
    except ValueError:  # its own message names the node object, not the text
        raise ValueError(f"{ast.unparse(node)} is not one") from None


def build_from_factory(spec: str) -> nn.Module:
    """The model "package.module:attribute" names (attribute may be dotted): a factory called with
    the literal arguments the spec gives, if any ("...:resnet18(num_classes=10)"), or a copy of a
    model instance."""
    spec, args, kwargs = _factory_arguments(spec)
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ExternalModelError(f"expected MODULE:FACTORY such as mypackage.models:build, got {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        raise ExternalModelError(f"{module_name!r} is a file path; give the module's import name "
                                 f"(models:build for models.py in the current folder or on PYTHONPATH)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ExternalModelError(f"cannot import {module_name!r} ({err}); is it installed, or on "
                                 f"PYTHONPATH?") from None
    except (Exception, SystemExit) as err:  # the user's module raised or exited while being imported
        exited = (" (argparse does on a command line it does not know, such as adt-fast's); put a script's own "
                  "code under if __name__ == \"__main__\":") if isinstance(err, SystemExit) else ""
        raise ExternalModelError(f"importing {module_name!r} failed: {raised(err)}{exited}") from None
    factory = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ExternalModelError(f"{module_name!r} has no attribute {attribute!r}")
        factory = getattr(factory, part)
    if isinstance(factory, nn.Module):
        if args or kwargs:
            raise ExternalModelError(f"{spec} is a model, not a factory: it takes no arguments")
        # A copy: two loads (a model and a transfer source, two runs in one process) must not share
        # weights, and a run must start from the instance as the module defines it.
        try:
            return copy.deepcopy(factory)
        except (Exception, SystemExit) as err:
            raise ExternalModelError(f"{spec} is a model instance that cannot be copied ({raised(err)}); name a "
                                     f"factory that builds it instead") from None
    if not callable(factory):
        raise ExternalModelError(f"{spec} is neither a model nor callable (a function or class that "
                                 f"builds the model)")
    call = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
    try:
        model = factory(*args, **kwargs)
    except (Exception, SystemExit) as err:  # the user's code: report whatever it raised, with its type
        raise ExternalModelError(f"calling {spec}({call}) failed: {raised(err)}") from None
    if not isinstance(model, nn.Module):
        raise ExternalModelError(f"{spec}({call}) returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def weights_only_refusal(err: Exception) -> str:
    """Why torch's weights-only unpickler stopped, in a few words: its own message is many lines,
    and advises turning the safety off."""
    text = str(err)
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if refused:
        return (f"it holds an object of class {refused.group(1)}, which weights-only loading refuses "
                f"(unpickling it could run arbitrary code)")
    blocked = re.search(r"unsupported GLOBAL ([\w.]+) whose module ([\w.]+) is blocked", text)
    if blocked:
        return (f"it refers to {blocked.group(1)}, of the module {blocked.group(2)} that weights-only loading "
                f"blocks (unpickling it could run arbitrary code)")
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    # Never torch's advice to load with weights_only=False; the cause may share its first line
    # ("Weights only load failed. X must be imported to load Y").
    lines = [re.sub(r"^Weights only load failed\.\s*", "", line.strip()) for line in text.splitlines()]
    lines = [line for line in lines
             if line and "weights_only" not in line and not line.startswith("Check the documentation")]
    where = detail.group(1).strip() if detail else (lines[0] if lines else "an unknown point")
    return (f"weights-only loading stopped at '{where}' (a damaged file, one not written by torch.save, or one "
            f"whose unpickling could run arbitrary code)")


def _strip_wrapper_prefix(state: dict, model: nn.Module) -> dict:
    """Keys without the prefix that DistributedDataParallel/DataParallel ("module.") or
    torch.compile ("_orig_mod.") put on every key, when every key has it and the model's have not."""
    wanted = model.state_dict().keys()
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in wanted):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_fitting(module: nn.Module, state: Any) -> Optional[str]:
    """module.load_state_dict(state); None, or why the weights do not fit, in one line (torch's
    message puts every missing key or shape on a line of its own, and a CLI error is one line)."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        tensors = isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
        return (_misfit(module, state) if tensors else "") or _first_complaint(err)
    return None


def _misfit(model: nn.Module, state: dict) -> str:
    """What differs between the weights and the model, in one line: keys missing or unexpected,
    shapes that differ, tensors whose values cannot be copied in (sparse, meta, ...)."""
    wanted = model.state_dict()
    unloadable = {k: problem for k in wanted if k in state and (problem := unreadable_tensor_problem(state[k]))}
    missing = [k for k in wanted if k not in state]
    unexpected = [k for k in state if k not in wanted]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(wanted[k].shape)}" for k in wanted
              if k in state and k not in unloadable and state[k].shape != wanted[k].shape]  # a nested one has none
    parts = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("shape differs", shapes)):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            parts.append(f"{len(names)} {label} ({', '.join(names[:3])}{more})")
    if unloadable:  # last: its advice holds a "; " of its own
        first, problem = next(iter(unloadable.items()))
        more = f" ({len(unloadable) - 1} more tensors cannot be loaded either)" if len(unloadable) > 1 else ""
        parts.append(f"{first} {problem}{more}")
    return "; ".join(parts)


def _first_complaint(err: RuntimeError) -> str:
    """torch's first complaint about a state dict: its message heads one line per key with
    "Error(s) in loading state_dict for NAME:", which alone says nothing."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        return f"{lines[1]}{more}"
    return lines[0] if lines else type(err).__name__


def load_weights(model: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Load a state dict (or a dict holding one under state_dict / model_state_dict / model).

    A prefix that wrapping put on every key ("module.", "_orig_mod.") is removed first."""
    if os.path.isdir(path):
        raise ExternalModelError(f"{path} is a directory, not a weights file")
    if not os.path.isfile(path):
        raise ExternalModelError(f"weights file {path} does not exist")
    damage = zip_damage(path) if zipfile.is_zipfile(path) else None  # torch's legacy format has no CRCs
    if damage is not None:
        raise ExternalModelError(f"weights file {path} is corrupt or truncated ({damage})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ExternalModelError(f"refusing to load {path}: {weights_only_refusal(err)}; save "
                                 f"model.state_dict() alone and pass that file") from None
    except Exception as err:
        raise ExternalModelError(f"cannot read {path} as a torch.save file "
                                 f"({type(err).__name__}: {err})") from None
    if isinstance(payload, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ExternalModelError(f"{path} holds no state dict (a dict of tensors, or one under "
                                 f"{', '.join(_STATE_DICT_KEYS)})")
    why = load_fitting(model, _strip_wrapper_prefix(payload, model))
    if why is not None:
        raise ExternalModelError(f"the weights in {path} do not fit the model: {why}")


def load_external_model(spec: str, weights: Union[None, str, os.PathLike] = None, *,
                        mean: Optional[Sequence[float]] = None,
                        std: Optional[Sequence[float]] = None,
                        device: Union[str, torch.device] = "cpu") -> nn.Module:
    """The model of `spec` with `weights` loaded, normalisation wrapped around it, in eval mode."""
    check_normalisation(mean, std)
    model = build_from_factory(spec)
    if weights is not None:
        load_weights(model, weights)
    if mean is not None:
        model = Normalized(model, mean, std)
    return model.to(device).eval()


def import_from_working_dir() -> None:
    """For the command line: let a factory spec name a module in the current folder, as `python -m
    adt_fast` can, when started as the installed `adt-fast` script (whose sys.path starts at the
    script's folder)."""
    here = os.getcwd()
    if not any(entry in ("", here) for entry in sys.path):
        sys.path.insert(0, here)


def is_factory_spec(arch) -> bool:
    """Whether an arch names a factory ("module:factory(...)") rather than a built-in classifier."""
    return isinstance(arch, str) and ":" in arch


def same_spec(a: str, b: str) -> bool:
    """Whether two specs name the same call: "m:f", "m:f()" and "m:f( )" do, as "m:f(width = 4)" and
    "m:f(width=4)" do; positional and keyword forms of one argument do not (that takes the factory)."""
    try:
        return _parsed_spec(a) == _parsed_spec(b)
    except ExternalModelError:
        return a == b


def _parsed_spec(spec: str) -> tuple:
    name, args, kwargs = _factory_arguments(spec.strip())
    return name.strip(), args, sorted(kwargs.items())


def build_classifier(arch: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """A classifier to train: a built-in one by name, or the model a factory spec builds, with
    the shape it is trained for recorded (``classifier_config``) so checkpoints can say it."""
    if not is_factory_spec(arch):
        return build_model(arch, num_classes, in_channels=in_channels, image_size=image_size)
    model = build_from_factory(arch)
    setattr(model, CONFIG_ATTRIBUTE, {"arch": arch, "num_classes": num_classes, "in_channels": in_channels,
                                      "image_size": image_size})
    return model


def classifier_config(model: nn.Module) -> dict:
    """How a classifier was built, as checkpoints record it: {"arch", "num_classes",
    "in_channels", "image_size"}; build_classifier(**it) builds it again."""
    recorded = getattr(model, CONFIG_ATTRIBUTE, None)
    if recorded is None and isinstance(model, Classifier):
        recorded = model.config
    if recorded is None:
        raise ValueError(f"{type(model).__name__} was not built by build_classifier or build_model, "
                         f"so nothing records its arch and input shape")
    return dict(recorded)


def moved_to(model: nn.Module, device) -> nn.Module:
    """The model on the device; a model from elsewhere may not move (out of memory, parameters on
    the meta device), which is the user's to know in one line rather than a traceback."""
    try:
        return model.to(device)
    except (Exception, SystemExit) as err:  # the user's model
        raise ExternalModelError(f"cannot move the model to {device}: {raised(err)}") from None


def check_classes(found: int, needed: int, data_name: str) -> None:
    """ExternalModelError when the model's number of classes (probe_classes) is not the data's."""
    if found != needed:
        raise ExternalModelError(f"the model returns (2, {found}) for two inputs; {data_name} needs logits of "
                                 f"shape (2, {needed})")


def probe_classes(model: nn.Module, in_channels: int, image_size: int, device, data_name: str) -> int:
    """The number of classes the model predicts, found by running it as attacks and training do:
    two inputs that require grad, forward and backward, in eval mode (no BatchNorm statistics
    change; each module's mode is restored). ExternalModelError, naming the cause, when it fails
    or does not return logits of shape (2, classes)."""
    probe = torch.zeros(2, in_channels, image_size, image_size, device=device, requires_grad=True)
    try:
        with module_mode(model, training=False):
            logits = model(probe)
            if isinstance(logits, torch.Tensor) and logits.requires_grad:
                torch.autograd.grad(logits.float().sum(), probe, allow_unused=True)
    except (Exception, SystemExit) as err:  # the user's forward
        raise ExternalModelError(f"the model fails on a {tuple(probe.shape)} input of {data_name} that "
                                 f"requires grad, as the attacks give it: {raised(err)}") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != 2:
        raise ExternalModelError(f"the model returns {_shape_of(logits)} for two inputs; it must return logits of "
                                 f"shape (2, number of classes)")
    if logits.shape[1] < 2:
        raise ExternalModelError(f"the model returns {_shape_of(logits)} for two inputs: {TOO_FEW_LOGITS}")
    return logits.shape[1]


def check_trainable(model: nn.Module, in_channels: int, image_size: int, device, num_classes: int) -> None:
    """What training needs of a model beyond probe_classes: parameters that require grad, and logits
    of shape (2, num_classes) in train mode too (some models return auxiliary outputs there). One
    train-mode forward and backward on two zero inputs, the model's state (BatchNorm statistics)
    put back after it. ExternalModelError when training cannot work."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ExternalModelError("the model has no parameters that require grad: there is nothing to train")
    saved = {name: value.detach().clone() for name, value in model.state_dict().items()}
    try:
        with module_mode(model, training=True):
            logits = model(torch.zeros(2, in_channels, image_size, image_size, device=device))
            if isinstance(logits, torch.Tensor) and tuple(logits.shape) == (2, num_classes):
                torch.autograd.grad(logits.float().sum(), trainable, allow_unused=True)
    except (Exception, SystemExit) as err:  # the user's forward
        raise ExternalModelError(f"the model fails in train mode on a (2, {in_channels}, {image_size}, "
                                 f"{image_size}) input: {raised(err)}") from None
    finally:
        with torch.no_grad():
            for name, value in model.state_dict().items():
                value.copy_(saved[name])
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, num_classes):
        raise ExternalModelError(f"in train mode the model returns {_shape_of(logits)} for two inputs; training "
                                 f"needs logits of shape (2, {num_classes}) in train mode as in eval mode")


def _shape_of(output) -> str:
    return str(tuple(output.shape)) if isinstance(output, torch.Tensor) else type(output).__name__
