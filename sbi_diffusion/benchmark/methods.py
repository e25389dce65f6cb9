"""Method registry: parsing method specs and building estimators.

A method spec is ``name`` or ``name:key=value,key=value``, for example
``diffusion:schedule=edm,parameterization=F,sampler=heun,steps=30`` or
``nle:mcmc_method=slice_np_vectorized,num_chains=20``. Values parse as int, float,
bool (``true``/``false``), ``none`` or string; a dotted key such as
``net_kwargs.hidden_features=128`` sets one entry of a dict-valued option.

Each option goes to exactly one place, decided in this order:

1. a key the method declares as a sampling option goes to ``posterior.sample()``
   (our estimators: ``sampler``, ``steps``, ``rtol``, ``atol``, ``eta``,
   ``corrector``, ``time_shift``; sbi's NPSE and FMPE:
   the keyword arguments of their ``sample()``);
2. a key the method declares as a posterior option goes to ``build_posterior()``
   (sbi NLE: ``mcmc_method``, ``sample_with`` and the MCMC settings ``num_chains``,
   ``thin``, ``warmup_steps``, ``init_strategy``, ``num_workers``, ``mp_context``;
   ``joint``: ``posterior_method``, ``mcmc_method``, ``log_prob_options``,
   ``mcmc_init`` and the same MCMC settings), so these share one trained model in
   the model cache;
3. a keyword argument of the trainer's ``train()`` goes there (e.g.
   ``training_batch_size``, ``learning_rate``, ``max_num_epochs``,
   ``stop_after_epochs``);
4. everything else goes to the constructor, and must be one of its parameters.

``diffusion`` and ``flow_matching`` take ``ensemble_size=K``: train ``K``
denoisers and sample with their mean (``inference.train_ensemble()``).

``consistency`` takes one more key, ``teacher``: the name of a method of this
package (``diffusion`` or ``flow_matching``, with its defaults) to distil from
instead of consistency training, e.g. ``consistency:teacher=diffusion,steps=2``.
The teacher is trained on the same simulations (or loaded from the model cache)
and the options of ``ConsistencyNPE.distill()`` take the place of ``train()``'s.

Unknown keys raise ``ValueError`` before anything is trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import inspect
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

SAMPLE_KEYS_OURS = frozenset(
    {
        "sampler",
        "steps",
        "rtol",
        "atol",
        "eta",
        "corrector",
        "time_shift",
    }
)
MCMC_PARAMETER_KEYS = frozenset(
    {
        "num_chains",
        "thin",
        "warmup_steps",
        "init_strategy",
        "num_workers",
        "mp_context",
    }
)
#: the spec key of an ensemble's size (trainers with ``train_ensemble``)
ENSEMBLE_KEY = "ensemble_size"
# Arguments the runner sets itself; a spec may not override them.
_RESERVED = frozenset(
    {
        "prior",
        "device",
        "show_progress_bars",
        "show_train_summary",
        "x",
        "sample_shape",
        "theta",
    }
)


class MethodUnavailableError(ValueError):
    """Raised when a method's estimator class cannot be imported."""


@dataclass(frozen=True)
class MethodDefinition:
    """How to build and run one method.

    Attributes:
        name: Registry name, e.g. ``"diffusion"`` or ``"npe"``.
        module: Module holding the trainer class.
        class_name: Name of the trainer class in ``module``.
        family: ``"sbi_diffusion"`` for this package's estimators, ``"sbi"`` for
            the baselines.
        sample_keys: Spec keys passed to ``posterior.sample()``; ``None`` means
            "every keyword of the posterior's ``sample()``", resolved lazily.
        posterior_keys: Spec keys passed to ``build_posterior()``.
        sample_keys_from: ``"module:Class.method"`` whose signature lists the
            sampling keywords, when ``sample_keys`` is ``None``.
        teacher_key: Spec key naming a method to distil from; with it set, the
            trainer's ``distill(teacher, ...)`` replaces ``train(...)``.
    """

    name: str
    module: str
    class_name: str
    family: str
    sample_keys: frozenset[str] | None = frozenset()
    posterior_keys: frozenset[str] = frozenset()
    sample_keys_from: str | None = None
    teacher_key: str | None = None

    def load_class(self) -> type:
        """Import the trainer class.

        Raises:
            MethodUnavailableError: If the class does not exist in this install.
        """
        try:
            module = importlib.import_module(self.module)
            return getattr(module, self.class_name)
        except (ImportError, AttributeError) as err:
            raise MethodUnavailableError(
                f"Method {self.name!r} needs {self.module}.{self.class_name}, which "
                f"is not available in this installation ({err}); choose another "
                f"method from: {', '.join(METHODS)}."
            ) from err

    def resolved_sample_keys(self) -> frozenset[str]:
        """The sampling keys, reading a signature where needed."""
        if self.sample_keys is not None:
            return self.sample_keys
        assert self.sample_keys_from is not None
        module_name, qualname = self.sample_keys_from.split(":")
        cls_name, method = qualname.split(".")
        cls = getattr(importlib.import_module(module_name), cls_name)
        return frozenset(_keywords(getattr(cls, method))) - _RESERVED


_VF_SAMPLE_FROM = (
    "sbi.inference.posteriors.vector_field_posterior:VectorFieldPosterior.sample"
)

METHODS: dict[str, MethodDefinition] = {
    "diffusion": MethodDefinition(
        "diffusion", "sbi_diffusion", "DiffusionNPE", "sbi_diffusion", SAMPLE_KEYS_OURS
    ),
    "flow_matching": MethodDefinition(
        "flow_matching",
        "sbi_diffusion",
        "FlowMatchingNPE",
        "sbi_diffusion",
        SAMPLE_KEYS_OURS,
    ),
    "consistency": MethodDefinition(
        "consistency",
        "sbi_diffusion",
        "ConsistencyNPE",
        "sbi_diffusion",
        SAMPLE_KEYS_OURS,
        teacher_key="teacher",
    ),
    "joint": MethodDefinition(
        "joint",
        "sbi_diffusion",
        "JointDiffusion",
        "sbi_diffusion",
        SAMPLE_KEYS_OURS,
        posterior_keys=MCMC_PARAMETER_KEYS
        | {"posterior_method", "mcmc_method", "log_prob_options", "mcmc_init"},
    ),
    "npe": MethodDefinition("npe", "sbi.inference", "NPE", "sbi"),
    "nle": MethodDefinition(
        "nle",
        "sbi.inference",
        "NLE",
        "sbi",
        posterior_keys=MCMC_PARAMETER_KEYS | {"mcmc_method", "sample_with"},
    ),
    "npse": MethodDefinition(
        "npse", "sbi.inference", "NPSE", "sbi", None, sample_keys_from=_VF_SAMPLE_FROM
    ),
    "fmpe": MethodDefinition(
        "fmpe", "sbi.inference", "FMPE", "sbi", None, sample_keys_from=_VF_SAMPLE_FROM
    ),
}
"""All methods the runner knows, by spec name."""

TEACHER_METHODS = ("diffusion", "flow_matching")
"""Methods a ``teacher=`` option may name."""


@dataclass(frozen=True)
class MethodSpec:
    """A method name with its options, as given on the command line.

    Attributes:
        name: Registry name (a key of :data:`METHODS`).
        options: Parsed options, in the order given.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def definition(self) -> MethodDefinition:
        """The registry entry of this method."""
        return METHODS[self.name]

    @property
    def label(self) -> str:
        """Readable identifier, e.g. ``diffusion[sampler=heun,steps=30]``."""
        if not self.options:
            return self.name
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}[{inner}]"

    def to_string(self) -> str:
        """The spec in the ``name:key=value`` syntax that :func:`parse` reads."""
        if not self.options:
            return self.name
        inner = ",".join(f"{k}={_format(v)}" for k, v in self.options.items())
        return f"{self.name}:{inner}"


@dataclass
class RoutedOptions:
    """Spec options split by where they are passed."""

    init: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    posterior: dict[str, Any] = field(default_factory=dict)
    sample: dict[str, Any] = field(default_factory=dict)
    teacher: MethodSpec | None = None
    ensemble_size: int = 1

    @property
    def train_method(self) -> str:
        """Name of the trainer method that fits: ``distill`` with a teacher."""
        return "train" if self.teacher is None else "distill"


def parse_value(text: str) -> Any:
    """Parse an option value as int, float, bool, None or string.

    Args:
        text: The raw value.

    Returns:
        The parsed value.
    """
    lowered = text.strip().lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    if lowered in {"none", "null"}:
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return str(value)


def parse(spec: str | MethodSpec) -> MethodSpec:
    """Parse a method spec ``name:key=value,key=value``.

    Args:
        spec: The spec string (or an already parsed spec, returned unchanged).

    Returns:
        The parsed spec.

    Raises:
        ValueError: If the method is unknown or an option is malformed or repeated.
    """
    if isinstance(spec, MethodSpec):
        _check_name(spec.name)
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"Method spec {spec!r} is empty; pass e.g. 'npe' or "
            "'diffusion:sampler=heun,steps=30'."
        )
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    _check_name(name)
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not all(k.isidentifier() for k in key.split(".")):
            raise ValueError(
                f"Option {item!r} in method spec {spec!r} is malformed; write "
                "options as key=value separated by commas."
            )
        if key in options:
            raise ValueError(f"Option {key!r} is given twice in method spec {spec!r}.")
        options[key] = parse_value(value)
    return MethodSpec(name=name, options=options)


def _check_name(name: str) -> None:
    if name not in METHODS:
        raise ValueError(
            f"Unknown method {name!r}; pass one of: {', '.join(METHODS)} "
            "(options as name:key=value,key=value)."
        )


def _keywords(func: Callable[..., Any]) -> list[str]:
    params = inspect.signature(func).parameters.values()
    return [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    ]


def _accepts_var_keywords(func: Callable[..., Any]) -> bool:
    params = inspect.signature(func).parameters.values()
    return any(p.kind is p.VAR_KEYWORD for p in params)


def route_options(spec: MethodSpec) -> RoutedOptions:
    """Split a spec's options into constructor, train, posterior and sample options.

    Args:
        spec: The parsed spec.

    Returns:
        The routed options.

    Raises:
        ValueError: If an option is reserved or unknown to the method, or if the
            method is not available in this installation.
    """
    definition = spec.definition
    cls = definition.load_class()
    sample_keys = definition.resolved_sample_keys()
    routed = RoutedOptions()
    if definition.teacher_key is not None and definition.teacher_key in spec.options:
        routed.teacher = _teacher_spec(spec, spec.options[definition.teacher_key])
    train_keys = set(_keywords(getattr(cls, routed.train_method))) - _RESERVED
    init_keys = set(_keywords(cls.__init__)) - _RESERVED
    init_open = _accepts_var_keywords(cls.__init__)
    ensemble_key = {ENSEMBLE_KEY} if hasattr(cls, "train_ensemble") else set()
    for dotted, value in spec.options.items():
        if dotted == definition.teacher_key:
            continue
        if dotted in ensemble_key:
            routed.ensemble_size = _ensemble_size(spec, value)
            continue
        key, _, sub = dotted.partition(".")
        if sub:
            # ``net_kwargs.hidden_features=128`` sets one entry of a dict option.
            value = {sub: value}
        if key in _RESERVED:
            raise ValueError(
                f"Option {key!r} of method {spec.name!r} is set by the benchmark "
                "itself; use the runner's own arguments (e.g. --device) instead."
            )
        if key in sample_keys:
            target = routed.sample
        elif key in definition.posterior_keys:
            target = routed.posterior
        elif key in train_keys:
            target = routed.train
        elif key in init_keys or init_open:
            target = routed.init
        else:
            target = None
        if target is not None and sub:
            target.setdefault(key, {}).update(value)
        elif target is not None:
            target[key] = value
        else:
            teacher = {definition.teacher_key} - {None}
            valid = sorted(
                set(sample_keys)
                | definition.posterior_keys
                | train_keys
                | init_keys
                | teacher
                | ensemble_key
            )
            raise ValueError(
                f"Unknown option {key!r} for method {spec.name!r}; valid options are: "
                f"{', '.join(valid)}."
            )
    return routed


def _ensemble_size(spec: MethodSpec, value: Any) -> int:
    """Check the ``ensemble_size=`` option of ``spec``: a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"Option {ENSEMBLE_KEY}={value!r} of method {spec.name!r} must be a "
            "positive integer (the number of denoisers trained)."
        )
    return value


def _teacher_spec(spec: MethodSpec, value: Any) -> MethodSpec:
    """Parse the ``teacher=`` option of ``spec`` into the teacher's spec."""
    if value not in TEACHER_METHODS:
        raise ValueError(
            f"Option teacher={value!r} of method {spec.name!r} must name one of "
            f"{', '.join(TEACHER_METHODS)} (trained with its defaults on the same "
            "simulations)."
        )
    return MethodSpec(name=value)


def defaults_fingerprint(spec: MethodSpec) -> str:
    """A short name of the defaults a method runs under, recorded in each row.

    Options a spec sets are in the row already; what it leaves at the default is
    not, and a default may change between two runs. For this package's trainers
    the fingerprint is a hash of ``training_recipe()`` (the defaults that decide
    what a training builds) and the default sampler with its options, and of the
    teacher's with a ``teacher=`` option. For sbi's methods it is the installed
    sbi version (``"sbi 0.27.0"``), since their defaults change only with it. The
    runner resumes only rows with the current fingerprint, so a changed default
    reruns old rows instead of relabelling them.

    Args:
        spec: The parsed spec.

    Returns:
        The fingerprint.
    """
    definition = spec.definition
    if definition.family == "sbi":
        return f"sbi {importlib.metadata.version('sbi')}"
    cls = definition.load_class()
    made_by: dict[str, Any] = {
        "recipe": cls.training_recipe(),
        "sampler": cls.default_sampler,
        "sampler_options": cls.default_sampler_options,
    }
    if definition.teacher_key is not None and definition.teacher_key in spec.options:
        teacher = _teacher_spec(spec, spec.options[definition.teacher_key])
        made_by["teacher"] = defaults_fingerprint(teacher)
    digest = hashlib.sha1(json.dumps(made_by, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:10]


def row_fingerprint(row: dict[str, Any]) -> str:
    """The defaults fingerprint of a result row (:func:`defaults_fingerprint`).

    Rows written before rows carried one: for sbi's methods it follows from the
    recorded sbi version; for this package's methods it is unknown (``""``), so
    such a row never counts as made under the current defaults.
    """
    if "defaults" in row:
        return str(row["defaults"])
    definition = METHODS.get(str(row["method"]))
    if definition is not None and definition.family == "sbi":
        return f"sbi {row.get('versions', {}).get('sbi', '?')}"
    return ""


def build_inference(
    spec: MethodSpec, prior: torch.distributions.Distribution, device: str
) -> tuple[Any, RoutedOptions]:
    """Instantiate the trainer of a method for a prior.

    Constructing is cheap and runs the estimator's own option validation, so the
    runner calls this for every (task, method) before it trains anything.

    Args:
        spec: The parsed spec.
        prior: The task's prior.
        device: Torch device for training and sampling.

    Returns:
        The trainer and the routed options.

    Raises:
        ValueError: If an option is invalid.
    """
    routed = route_options(spec)
    cls = spec.definition.load_class()
    init_keys = set(_keywords(cls.__init__))
    kwargs: dict[str, Any] = dict(routed.init)
    kwargs["device"] = device
    if "show_progress_bars" in init_keys or _accepts_var_keywords(cls.__init__):
        kwargs["show_progress_bars"] = False
    try:
        inference = cls(prior, **kwargs)
    except TypeError as err:
        raise ValueError(
            f"Method {spec.label!r} rejected its options: {err}; check the option "
            "names against the estimator's documentation."
        ) from err
    return inference, routed


def build_posterior(
    spec: MethodSpec, inference: Any, routed: RoutedOptions, estimator: Any = None
) -> Any:
    """Build the posterior of a trained method.

    Args:
        spec: The parsed spec.
        inference: The trainer (trained, or fresh when ``estimator`` is given).
        routed: The routed options.
        estimator: A trained estimator (what ``train()`` returned); ``None`` uses
            the trainer's own. Every trainer takes it as the first argument of
            ``build_posterior``.

    Returns:
        An sbi ``NeuralPosterior``.
    """
    options = dict(routed.posterior)
    mcmc_parameters = {
        k: options.pop(k) for k in list(options) if k in MCMC_PARAMETER_KEYS
    }
    if mcmc_parameters:
        options["mcmc_parameters"] = mcmc_parameters
    return inference.build_posterior(estimator, **options)


@contextlib.contextmanager
def count_network_evaluations(
    spec: MethodSpec, inference: Any, posterior: Any
) -> Iterator[dict[str, float]]:
    """Count network evaluations of the sbi baselines during sampling.

    Our estimators report ``posterior.last_nfe`` themselves. For sbi's methods the
    counter records evaluated rows: the vector-field network for NPSE and FMPE,
    likelihood evaluations for NLE, and one flow pass per sample for NPE. The
    joint model's NLE-style posterior (``posterior_method="likelihood_mcmc"``)
    counts likelihood evaluations like NLE; each one solves the probability-flow
    ODE.

    Args:
        spec: The parsed spec.
        inference: The trained trainer.
        posterior: The posterior about to be sampled.

    Yields:
        A dict whose ``"rows"`` entry holds the number of evaluated rows.
    """
    counter = {"rows": 0.0}
    handles: list[Any] = []
    restore: list[Callable[[], None]] = []
    estimator: Any = None
    if spec.name in {"npse", "fmpe"}:
        estimator = getattr(posterior, "vector_field_estimator", None)
    elif spec.name == "nle":
        potential = getattr(posterior, "potential_fn", None)
        estimator = getattr(potential, "likelihood_estimator", None)
    elif spec.name == "joint":
        potential = getattr(posterior, "potential_fn", None)
        estimator = getattr(potential, "likelihood", None)
    if spec.name in {"npse", "fmpe"} and estimator is not None:
        net = getattr(estimator, "net", None)
        if isinstance(net, torch.nn.Module):

            def hook(_module: Any, args: tuple[Any, ...], _out: Any) -> None:
                counter["rows"] += float(args[0].shape[:-1].numel())

            handles.append(net.register_forward_hook(hook))
    elif spec.name in {"nle", "joint"} and estimator is not None:
        original = estimator.log_prob

        def log_prob(input: Any, *args: Any, **kwargs: Any) -> Any:
            # one row per likelihood evaluation: NLE's ``log_prob(x, theta)``
            # and the joint likelihood's ``log_prob(x, theta=...)`` both take
            # one x row per theta row.
            counter["rows"] += float(input.shape[:-1].numel())
            return original(input, *args, **kwargs)

        estimator.log_prob = log_prob
        restore.append(lambda: delattr(estimator, "log_prob"))
    try:
        yield counter
    finally:
        for handle in handles:
            handle.remove()
        for undo in restore:
            undo()
