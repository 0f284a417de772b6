"""Training methods as compositions of shared pieces, and the one registry of methods by name.

A method's training step is: produce a perturbed input (the *perturbation*: none, PGD, or a
fitted explicit distribution), then minimise an *outer loss* on it. The inner problem of PGD and
of the distribution uses an *inner loss* (CE, TRADES-KL, or the TRADES loss). So

    standard      = Clean()                                    + CEOuter()
    at-pgd        = PGD(CEInner(), uniform start)              + CEOuter()
    trades        = PGD(TradesKLInner(), 0.001*N(0,1) start)   + TradesOuter(beta)
    adt-exp       = ExplicitDistribution(CEInner())            + CEOuter()
    adt-exp --loss trades
                  = ExplicitDistribution(TradesInner(beta))    + TradesOuter(beta)

Every inner problem runs with the classifier in eval mode (BatchNorm frozen, ``eval_mode``) and
takes gradients only with respect to the perturbation or distribution parameters
(``torch.autograd.grad`` inside the attack engine and ``fit_distribution``), so the classifier's
``.grad`` is never touched before the outer backward.

Extension (issue 5): a method may own extra trainable networks and their optimisers and
schedulers (``modules()``, ``optimisers()``, ``schedulers()``), and extra plain state
(``extra_state()``); the training loop moves nothing itself but checkpoints, restores, and steps
all of them with the classifier's. Register a new method with ``register_method(MethodSpec(...))``.
"""

from __future__ import annotations

import contextlib
import io
import math
import pickle
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from ..attacks.distribution import ADAM_EPS, DistributionFit, choose_samples_per_pass, fit_distribution
from ..attacks.engine import eval_mode, iterative_attack, uniform_start
from ..attacks.losses import cross_entropy, trades_kl, trades_loss
from ..attacks.suite import check_epsilon, check_step_size
from ..checks import check_steps
from ..distributed import BatchShard
from ..models.external import weights_only_refusal
from .config import AUTO

PerExampleLoss = Callable[[torch.Tensor], torch.Tensor]

# TRADES' own code starts its KL maximisation at x + 0.001 * N(0, 1): the KL and its gradient
# vanish at x itself, and a small start keeps the search near x (a uniform start in the ball would
# be a different attack).
TRADES_START_STD = 0.001


def needs_two_examples(network: nn.Module, example: torch.Tensor) -> bool:
    """Whether a BatchNorm layer of `network` normalises a single value per channel when the
    network reads `example`, a batch of one (features at 1x1): training-mode BatchNorm refuses
    such a batch, so every training batch must hold at least two examples. One eval-mode forward,
    no random numbers drawn, no state changed."""
    per_channel = []

    def record(layer, inputs):
        per_channel.append(inputs[0].numel() // inputs[0].shape[1])
    hooks = [layer.register_forward_pre_hook(record) for layer in network.modules()
             if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    try:
        with eval_mode(network), torch.no_grad():
            network(example)
    finally:
        for hook in hooks:
            hook.remove()
    return min(per_channel, default=2) < 2


# ------------------------------------------------------------------------------------------------
# Runtime: device, precision, memory format, op backend
# ------------------------------------------------------------------------------------------------
@dataclass
class Runtime:
    """How forward passes run: bf16 autocast (float32 master weights) and channels_last inputs.

    ``shard``: under data parallelism, which rows of the global batch this process holds; the
    random numbers of a step are then drawn for the global batch and sliced (``draw``,
    ``op_noise``), so every example gets what a single process would give it.
    """

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    channels_last: bool = False
    backend: str = "auto"
    shard: Optional[BatchShard] = None

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def draw(self, sample: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """`sample(like)`: random numbers shaped like the batch (this rank's rows of the global draw)."""
        return sample(like) if self.shard is None else self.shard.draw(sample, like)

    def batch_size(self, like: torch.Tensor) -> int:
        """The global batch that `like` (this process's rows) belongs to."""
        return like.shape[0] if self.shard is None else self.shard.total

    def op_noise(self, like: torch.Tensor, num_samples: int) -> Optional[torch.Tensor]:
        """Normals for one call of the sampling op on `like`: None (the op draws them) in one process."""
        return None if self.shard is None else self.shard.op_normals(like, num_samples, self.backend)

    def set_memory_format(self, model: nn.Module, channels_last: bool) -> None:
        """The classifier's 4-D weights and, from now on, its 4-D inputs in channels_last (NHWC),
        or in contiguous NCHW; the parameters stay the same objects (optimisers keep them)."""
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self.channels_last = channels_last

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """model(x) under the configured precision and memory format."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return model(x)


# ------------------------------------------------------------------------------------------------
# Inner losses: what the perturbation maximises. bind() runs once per batch (classifier in eval
# mode) and returns a per-example loss of n*B stacked inputs (n = 1 for PGD, k for the
# distribution's sample-major batch), so the labels / clean logits are repeated n times.
# ------------------------------------------------------------------------------------------------
class InnerLoss:
    name = "inner"

    def bind(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> PerExampleLoss:
        raise NotImplementedError


def _repeats(x_adv: torch.Tensor, batch: int) -> int:
    n, rem = divmod(x_adv.shape[0], batch)
    if rem or n < 1:
        raise ValueError(f"the inner loss got {x_adv.shape[0]} inputs for a batch of {batch}")
    return n


class CEInner(InnerLoss):
    """Cross-entropy against the true labels (AT-PGD, ADT_EXP)."""

    name = "ce"

    def bind(self, model, x, y, rt):
        batch = y.shape[0]

        def loss_fn(x_adv):
            return cross_entropy(rt.forward(model, x_adv), y.repeat(_repeats(x_adv, batch)))
        return loss_fn


def _clean_logits(model, x, rt) -> torch.Tensor:
    with torch.no_grad():
        return rt.forward(model, x).float()


def accuracy_logits(model, x, clean_logits, rt) -> torch.Tensor:
    """Clean logits for train accuracy: the outer loss's when it computed them, else one eval-mode
    forward under no_grad (no BatchNorm update), before the update."""
    if clean_logits is None:
        with eval_mode(model):
            clean_logits = _clean_logits(model, x, rt)
    return clean_logits.detach()


def _detached(logits: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if logits is None else logits.detach()


class TradesKLInner(InnerLoss):
    """KL(f(x) || f(x + delta)), the clean logits fixed (TRADES' inner problem)."""

    name = "trades-kl"

    def bind(self, model, x, y, rt):
        clean = _clean_logits(model, x, rt)

        def loss_fn(x_adv):
            n = _repeats(x_adv, clean.shape[0])
            return trades_kl(rt.forward(model, x_adv), clean.repeat(n, 1))
        return loss_fn


class TradesInner(InnerLoss):
    """The full TRADES loss CE(f(x), y) + beta * KL, the clean logits fixed (ADT with --loss trades).

    The CE term is constant in delta; it is kept so the tracked objective is the TRADES loss
    itself, and beta sets the balance against the entropy term lambda * H.
    """

    name = "trades"

    def __init__(self, beta: float):
        self.beta = beta

    def bind(self, model, x, y, rt):
        clean = _clean_logits(model, x, rt)

        def loss_fn(x_adv):
            n = _repeats(x_adv, clean.shape[0])
            return trades_loss(rt.forward(model, x_adv), clean.repeat(n, 1), y.repeat(n), self.beta)
        return loss_fn


# ------------------------------------------------------------------------------------------------
# Perturbations: produce the (detached) input the outer loss trains on.
# ------------------------------------------------------------------------------------------------
class Perturbation:
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> torch.Tensor:
        raise NotImplementedError

    def tune(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, rt: Runtime,
             recorded: Optional[dict] = None) -> dict:
        """Implementation choices that do not change the result (see Method.tune); {} if none."""
        return {}

    def apply_tuning(self, tuning: dict) -> None:
        pass


class Clean(Perturbation):
    """No perturbation: returns x itself (standard training)."""

    def __call__(self, model, x, y, rt):
        return x


class PGD(Perturbation):
    """Signed-gradient ascent in the l_inf ball (the shared attack engine), classifier in eval mode.

    start: "uniform" for U(-eps, eps) (Madry et al.), "trades" for 0.001 * N(0, 1) (TRADES' code),
    "none" for x itself. Randomness comes from torch's default generator for x's device.
    """

    STARTS = ("uniform", "trades", "none")

    def __init__(self, inner: InnerLoss, *, epsilon: float, steps: int, step_size: float,
                 start: str = "uniform"):
        if start not in self.STARTS:
            raise ValueError(f"start must be one of {self.STARTS}, got {start!r}")
        # TrainConfig checks these for the CLI; a method composed in Python gets the same refusals
        # (a negative step descends the loss and NaN gives NaN inputs, both silently).
        self.inner, self.start = inner, start
        self.epsilon = check_epsilon(epsilon)
        self.steps = check_steps(steps, "steps", minimum=0)
        self.step_size = check_step_size(step_size)

    def _start(self, x, rt):
        if self.start == "uniform":
            return rt.draw(uniform_start, x)
        if self.start == "trades":
            return rt.draw(torch.randn_like, x) * (TRADES_START_STD / self.epsilon)
        return None

    def __call__(self, model, x, y, rt):
        with eval_mode(model):
            loss_fn = self.inner.bind(model, x, y, rt)
            return iterative_attack(loss_fn, x, epsilon=self.epsilon, steps=self.steps,
                                    step_size=self.step_size, start=self._start(x, rt))


class ExplicitDistribution(Perturbation):
    """ADT_EXP's inner problem (Alg. 2): fit per-example (mu, rho) and return one sample of it.

    Each of the T Adam steps draws k samples, runs them through the classifier in one batched
    forward of k*B inputs and ascends E[inner loss] + lambda * H, H being the per-dimension mean
    of -log p (see fit_distribution). The classifier then trains on one fresh sample of the final
    distribution. ``track=True`` keeps the last fit (with its per-step objective) in ``last_fit``.
    ``samples_per_pass`` splits the k*B batch into classifier passes of that many samples (None:
    one pass; "auto": one pass until ``tune`` has measured the fastest split).
    ``accumulate_grads``: the authors' adt_exp.py's step rule and Adam eps, scaled to their
    gradients' size by the global batch (see fit_distribution).
    """

    def __init__(self, inner: InnerLoss, *, epsilon: float, steps: int, samples: int, lbd: float,
                 lr: float = 0.3, betas=(0.0, 0.0), accumulate_grads: bool = False, backend: str = "auto",
                 track: bool = False, samples_per_pass=None):
        self.inner, self.epsilon, self.steps, self.samples, self.lbd = inner, epsilon, steps, samples, lbd
        self.lr, self.betas, self.backend, self.track = lr, tuple(betas), backend, track
        self.accumulate_grads = accumulate_grads
        self.measure_passes = samples_per_pass == AUTO
        self.samples_per_pass = None if self.measure_passes else samples_per_pass
        self.last_fit: Optional[DistributionFit] = None

    def tune(self, model, x, y, rt, recorded=None):
        if not self.measure_passes:
            return {"samples_per_pass": self.samples_per_pass or self.samples, "chosen_by": "--samples-per-pass"}
        recorded = recorded or {}
        per_pass = recorded.get("samples_per_pass")
        if (recorded.get("chosen_by") == "measurement" and isinstance(per_pass, int)
                and not isinstance(per_pass, bool) and per_pass >= 1):
            return recorded  # a record that is not a valid measurement is measured again
        with eval_mode(model):
            best, seconds = choose_samples_per_pass(self.inner.bind(model, x, y, rt), x, self.samples)
        return {"samples_per_pass": best, "chosen_by": "measurement",
                "seconds_per_sample": {str(m): t for m, t in seconds.items()}}

    def apply_tuning(self, tuning):
        if self.measure_passes and "samples_per_pass" in tuning:
            self.samples_per_pass = int(tuning["samples_per_pass"])

    def _adam_eps(self, x, rt) -> float:
        if not self.accumulate_grads:
            return ADAM_EPS
        batch = x.shape[0] if rt.shard is None else rt.shard.total
        return ADAM_EPS * batch / self.samples

    def __call__(self, model, x, y, rt):
        with eval_mode(model):
            loss_fn = self.inner.bind(model, x, y, rt)
            fit = fit_distribution(loss_fn, x, epsilon=self.epsilon, steps=self.steps,
                                   num_samples=self.samples, lbd=self.lbd, lr=self.lr,
                                   betas=self.betas, accumulate_grads=self.accumulate_grads,
                                   adam_eps=self._adam_eps(x, rt), backend=self.backend, track=self.track,
                                   noise=lambda step: rt.op_noise(x, self.samples),
                                   samples_per_pass=self.samples_per_pass)
        if self.track:
            self.last_fit = fit
        return fit.sample(x, self.epsilon, 1, backend=self.backend, noise=rt.op_noise(x, 1))[0]


# ------------------------------------------------------------------------------------------------
# Outer losses: per-example training loss, plus the clean logits when they come for free.
# ------------------------------------------------------------------------------------------------
class OuterLoss:
    def __call__(self, model, x, x_adv, y, rt) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError


class CEOuter(OuterLoss):
    """CE on the perturbed input (on the clean input for standard training)."""

    def __call__(self, model, x, x_adv, y, rt):
        logits = rt.forward(model, x_adv)
        return cross_entropy(logits, y), (logits if x_adv is x else None)


class TradesOuter(OuterLoss):
    """CE(f(x), y) + beta * KL(f(x) || f(x + delta)), both forwards in train mode (TRADES' code)."""

    def __init__(self, beta: float):
        self.beta = beta

    def __call__(self, model, x, x_adv, y, rt):
        clean = rt.forward(model, x)
        adv = rt.forward(model, x_adv)
        return trades_loss(adv, clean, y, self.beta), clean


# ------------------------------------------------------------------------------------------------
# Methods
# ------------------------------------------------------------------------------------------------
@dataclass
class StepOutput:
    """One training step's result: the reported loss, the clean logits for train accuracy when
    the step computed them anyway (else None; ``train_step`` adds them on request), and the
    scalar that is backwarded when it differs from the loss (an amortised method's loss minus
    lambda times its entropy term, whose detached batch mean is kept for logging)."""

    loss: torch.Tensor
    clean_logits: Optional[torch.Tensor]
    x_adv: Optional[torch.Tensor] = None
    objective: Optional[torch.Tensor] = None
    entropy: Optional[torch.Tensor] = None


class Method:
    """What the training loop knows about a method.

    The loop owns the classifier, its SGD optimiser and its lr schedule. A method may add:
    - ``modules()``: extra trainable networks (generators, q-networks), built on the runtime's
      device; the loop switches them to train mode each epoch and checkpoints their state_dicts;
    - ``optimisers()`` / ``schedulers()``: theirs, zeroed, stepped and checkpointed with the
      classifier's (names must not be "model"; schedulers step once per epoch);
    - ``extra_state()`` / ``load_extra_state()``: any other state, weights-only types only.
    ``step`` computes the loss; ``train_step`` (zero grads, step, backward, step every optimiser)
    can be overridden by a method whose update is not one backward of one loss. ``tune`` /
    ``apply_tuning`` measure and set implementation choices that leave the result unchanged
    (how ADT_EXP splits its k*B batch); the loop records them in the run directory.
    """

    name = "method"

    def __init__(self, config, model: nn.Module, runtime: Runtime):
        self.config = config
        self.runtime = runtime

    @property
    def name_in_messages(self) -> str:
        """The method's name in messages: the config's --method when it has one (a registered
        method, whatever class serves it), else the class's ``name``."""
        return getattr(self.config, "method", self.name)

    def modules(self) -> dict:
        return {}

    def optimisers(self) -> dict:
        return {}

    def schedulers(self) -> dict:
        return {}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def tune(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             recorded: Optional[dict] = None) -> dict:
        """Settings that leave the result unchanged, for this device and model: a flag's value, else
        `recorded` (what an earlier invocation of the run chose), else measured on the batch (x, y)
        without using random numbers. JSON types; {} when the method has none."""
        return {}

    def apply_tuning(self, tuning: dict) -> None:
        pass

    def networks_needing_two_examples(self, x: torch.Tensor) -> list:
        """Names of the method's networks that cannot train on a batch of one example (`x`: one
        training image, (1, C, H, W); see needs_two_examples), for the loop to refuse a
        --batch-size that would give them one. [] when it has none."""
        return []

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        raise NotImplementedError

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimisers: dict,
                   measure_accuracy: bool = False,
                   step: Optional[Callable[[nn.Module, torch.Tensor, torch.Tensor], StepOutput]] = None
                   ) -> StepOutput:
        """One update. With measure_accuracy, out.clean_logits is never None: a step that has no
        clean logits of its own pays one eval-mode forward for them (accuracy_logits). `step`
        replaces ``self.step`` (the data-parallel wrapper, whose objective DDP all-reduces in the
        backward)."""
        for optimiser in optimisers.values():
            optimiser.zero_grad(set_to_none=True)
        out = _checked_step_output((step or self.step)(model, x, y), self.name_in_messages)
        if measure_accuracy and out.clean_logits is None:
            out.clean_logits = accuracy_logits(model, x, None, self.runtime)
        (out.loss if out.objective is None else out.objective).backward()
        for optimiser in optimisers.values():
            optimiser.step()
        return out


def _checked_step_output(out, method: str) -> StepOutput:
    """A step's result as train_step can backward it, else a TypeError naming the method: a
    StepOutput whose loss (or objective, when set) is a scalar tensor with a gradient."""
    if not isinstance(out, StepOutput):
        raise TypeError(f"method {method}: step returned {type(out).__name__}, not a StepOutput(loss, clean_logits)")
    target = "objective" if out.objective is not None else "loss"
    value = getattr(out, target)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"method {method}: the step's {target} must be a scalar tensor (the batch mean), got {shape}")
    if not value.requires_grad:
        raise TypeError(f"method {method}: the step's {target} has no gradient (computed under no_grad or "
                        f"detached), so the update would not change the networks")
    return out


class ComposedMethod(Method):
    """perturbation + outer loss; clean logits when the outer loss computes them."""

    def __init__(self, config, model, runtime, perturbation: Perturbation, outer: OuterLoss, name: str):
        super().__init__(config, model, runtime)
        self.perturbation, self.outer, self.name = perturbation, outer, name

    def step(self, model, x, y):
        x_adv = self.perturbation(model, x, y, self.runtime)
        per_example, clean_logits = self.outer(model, x, x_adv, y, self.runtime)
        return StepOutput(per_example.mean(), _detached(clean_logits), x_adv)

    def tune(self, model, x, y, recorded=None):
        return self.perturbation.tune(model, x, y, self.runtime, recorded)

    def apply_tuning(self, tuning):
        self.perturbation.apply_tuning(tuning)


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    params: the method-dependent settings it uses (see config.METHOD_PARAMS), each with a default
        value or a function of the partly resolved config (e.g. step size = epsilon / 4).
    losses: the values --loss may take (when "loss" is in params).
    build: (resolved config, classifier, runtime) -> Method.
    validate: extra checks on the resolved config (raise config.ConfigError).
    uses_sampling_op: whether it calls adt_fast.sample_and_entropy, so --backend applies.
    former_defaults: for a setting of params whose default changed, the value a run whose
        config.json has no entry for it ran with (it was written before the setting existed), so
        that it resumes with its own objective (config.TrainConfig.from_record).
    """

    name: str
    build: Callable
    params: dict = field(default_factory=dict)
    losses: tuple = ("ce",)
    description: str = ""
    validate: Callable = lambda cfg: None
    uses_sampling_op: bool = False
    former_defaults: dict = field(default_factory=dict)


METHODS: dict = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    _check_spec(spec)
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    METHODS[spec.name] = spec
    return spec


def _check_spec(spec: MethodSpec) -> None:
    """A spec that the registry, TrainConfig.resolve and the loop can use (ValueError naming the field):
    a setting its params name but TrainConfig lacks would be ignored, not used."""
    from .config import METHOD_PARAMS

    if not isinstance(spec, MethodSpec):
        raise ValueError(f"register_method takes a MethodSpec, got {spec!r}")
    if not isinstance(spec.name, str) or not spec.name:
        raise ValueError(f"MethodSpec.name must be a non-empty string (the --method name), got {spec.name!r}")
    for name in ("build", "validate"):
        if not callable(getattr(spec, name)):
            raise ValueError(f"MethodSpec {spec.name!r}: {name} must be callable, got {getattr(spec, name)!r}")
    if not isinstance(spec.params, dict):
        raise ValueError(f"MethodSpec {spec.name!r}: params must be a dict of setting name -> default, "
                         f"got {spec.params!r}")
    unknown = [name for name in spec.params if name not in METHOD_PARAMS]
    if unknown:
        raise ValueError(f"MethodSpec {spec.name!r}: params names {', '.join(map(repr, unknown))}, which "
                         f"TrainConfig has no setting for; use those of config.METHOD_PARAMS "
                         f"({', '.join(METHOD_PARAMS)}), or add the field (docs/training.md, section 5)")
    if not isinstance(spec.former_defaults, dict) or not set(spec.former_defaults) <= set(spec.params):
        raise ValueError(f"MethodSpec {spec.name!r}: former_defaults must be a dict of setting name -> value "
                         f"for settings its params name, got {spec.former_defaults!r}")
    if (not isinstance(spec.losses, (tuple, list)) or not spec.losses
            or not all(isinstance(loss, str) for loss in spec.losses)):
        raise ValueError(f"MethodSpec {spec.name!r}: losses must be a tuple of --loss values, got {spec.losses!r}")


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def build_method(config, model: nn.Module, runtime: Runtime) -> Method:
    """The method of a resolved config, for this classifier and runtime."""
    method = method_spec(config.method).build(config, model, runtime)
    if not isinstance(method, Method):
        raise TypeError(f"the build of method {config.method!r} returned {type(method).__name__}, not a Method "
                        f"(adt_fast.train.Method or a subclass)")
    modules = method.modules()
    if not isinstance(modules, dict) or not all(isinstance(module, nn.Module) for module in modules.values()):
        raise TypeError(f"method {config.method}: modules() must return a dict of name -> nn.Module (the networks "
                        f"it trains besides the classifier), got {type(modules).__name__}")
    _check_extra_state(method, config.method)
    return method


def _check_extra_state(method: Method, name: str) -> None:
    """Every checkpoint saves extra_state() and a resume reads it back weights-only: state that
    cannot make that round trip failed at the first checkpoint (losing the epoch), or only at the
    resume, after the whole run had trained."""
    state = method.extra_state()
    if isinstance(state, dict) and not state:
        return
    buffer = io.BytesIO()
    try:
        torch.save(state, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickling and the weights-only unpickler raise many types
        why = weights_only_refusal(err) if isinstance(err, pickle.UnpicklingError) else f"{type(err).__name__}: {err}"
        raise TypeError(f"method {name}: extra_state() must hold what a checkpoint can save and read back "
                        f"weights-only (tensors, numbers, strings, and lists, tuples and dicts of them): {why}") from None


def _pgd_step_size(cfg) -> float:
    return cfg.epsilon / 4


def inner_entropy_weight(cfg) -> float:
    """lambda, or beta * lambda with --loss trades --beta-scales-entropy.

    With the TRADES loss, --no-beta-scales-entropy (adt-exp's default) makes the ADT inner
    objective CE + beta * KL + lambda * H, so relative to the KL term the entropy weighs
    lambda / beta; --beta-scales-entropy (the amortised methods' default, the authors' balance)
    makes it CE + beta * (KL + lambda * H), the entropy weighing lambda against the KL as against
    CE without TRADES (docs/training.md, section 2a).
    """
    return cfg.lbd * cfg.beta if cfg.loss == "trades" and cfg.beta_scales_entropy else cfg.lbd


# TRADES' own CIFAR-10 script (train_trades_cifar10.py): 10 steps of 0.007 at epsilon 0.031;
# --trades-inner trades-code takes that, the step scaled with epsilon (0.007 at 8/255).
TRADES_CODE_STEPS = 10
TRADES_CODE_STEP = 0.007 / (8 / 255)


def _trades_steps(cfg) -> int:
    return TRADES_CODE_STEPS if cfg.trades_inner == "trades-code" else 7


def _trades_step_size(cfg) -> float:
    return cfg.epsilon * TRADES_CODE_STEP if cfg.trades_inner == "trades-code" else _pgd_step_size(cfg)


def _validate_trades(cfg) -> None:
    from .config import ConfigError

    if cfg.trades_inner != "trades-code":
        return
    wanted = {"steps": _trades_steps(cfg), "step_size": _trades_step_size(cfg)}
    for name, value in wanted.items():
        if not math.isclose(getattr(cfg, name), value, rel_tol=1e-9):
            raise ConfigError(f"--trades-inner trades-code sets --{name.replace('_', '-')} {value:g}; "
                              f"it contradicts --{name.replace('_', '-')} {getattr(cfg, name):g} "
                              f"(use --trades-inner at-pgd to choose steps and step size yourself)")


PGD_PARAMS = {"steps": 7, "step_size": _pgd_step_size}
TRADES_PARAMS = {"trades_inner": "at-pgd", "steps": _trades_steps, "step_size": _trades_step_size, "beta": 6.0}
ADT_EXP_PARAMS = {"steps": 7, "samples": 5, "lbd": 0.01, "dist_lr": 0.3, "dist_betas": (0.0, 0.0),
                  "dist_grad": "per-step", "loss": "ce", "beta": 6.0, "beta_scales_entropy": False,
                  "samples_per_pass": AUTO}


def _build_standard(cfg, model, rt):
    return ComposedMethod(cfg, model, rt, Clean(), CEOuter(), "standard")


def _build_at_pgd(cfg, model, rt):
    pgd = PGD(CEInner(), epsilon=cfg.epsilon, steps=cfg.steps, step_size=cfg.step_size, start="uniform")
    return ComposedMethod(cfg, model, rt, pgd, CEOuter(), "at-pgd")


def _build_trades(cfg, model, rt):
    pgd = PGD(TradesKLInner(), epsilon=cfg.epsilon, steps=cfg.steps, step_size=cfg.step_size, start="trades")
    return ComposedMethod(cfg, model, rt, pgd, TradesOuter(cfg.beta), "trades")


def _build_adt_exp(cfg, model, rt):
    if cfg.loss == "trades":
        inner, outer = TradesInner(cfg.beta), TradesOuter(cfg.beta)
    else:
        inner, outer = CEInner(), CEOuter()
    dist = ExplicitDistribution(inner, epsilon=cfg.epsilon, steps=cfg.steps, samples=cfg.samples,
                                lbd=inner_entropy_weight(cfg), lr=cfg.dist_lr, betas=cfg.dist_betas,
                                accumulate_grads=cfg.dist_grad == "accumulated", backend=rt.backend,
                                samples_per_pass=cfg.samples_per_pass)
    return ComposedMethod(cfg, model, rt, dist, outer, "adt-exp")


register_method(MethodSpec("standard", _build_standard, {},
                           description="cross-entropy on clean inputs"))
register_method(MethodSpec("at-pgd", _build_at_pgd, dict(PGD_PARAMS),
                           description="Madry et al.: train on PGD examples (T=7, step eps/4, uniform start)"))
register_method(MethodSpec("trades", _build_trades, dict(TRADES_PARAMS), validate=_validate_trades,
                           description="TRADES: CE(f(x)) + beta * KL(f(x) || f(x+delta)), KL maximised by PGD"))
register_method(MethodSpec("adt-exp", _build_adt_exp, dict(ADT_EXP_PARAMS), losses=("ce", "trades"),
                           uses_sampling_op=True,
                           description="ADT_EXP (Alg. 2): per-example explicit distributions, one sample trains"))

# Issue 5's methods (adt-exp-am, adt-imp-am, at-fgsm, alp, l2l) register themselves on import.
from . import amortized_methods  # noqa: E402,F401
