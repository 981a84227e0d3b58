"""The decay policy's settings: one pydantic model, the [monitor] section of config.toml and
the config ``DecayMonitor`` takes, each field with its type, default, bounds and description.

Light on purpose (pydantic only): the daemon's settings import it without the detectors' river.
The signal names are Literals here; tests check them against the detector and signal registries.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

__all__ = [
    "DetectorName",
    "LabelFreeSignalName",
    "MonitorConfig",
    "MonitorMode",
    "SignalName",
    "TriggerName",
]

# keys of detectors.DETECTORS, signals.LABEL_FREE_SIGNALS and triggers.POOR_QUALITY_TRIGGERS
DetectorName = Literal["ewma", "adwin", "page_hinkley"]
LabelFreeSignalName = Literal["confidence", "low_confidence_share", "oos_share"]
SignalName = Literal[DetectorName, LabelFreeSignalName]  # the ones `signals` may list
TriggerName = Literal["unknown_intent", "accuracy_floor"]
MonitorMode = Literal["any", "all"]

_SIGNAL_NAMES: tuple[str, ...] = get_args(SignalName)


class MonitorConfig(BaseModel):
    """Every field of the decay policy. The EWMA defaults are
    measured with ``bench/loop.py --sections detection``.

    At ~0.88 accuracy an EWMA with alpha 0.02 (an effective window of ~100 outcomes)
    wanders below a 10% drop line by noise alone (hundreds of false alarms over 20 seeds
    x 9,000 drift-free events); alpha 0.003 with a 500-outcome reference peaked at 0.60
    of the way to the line there and still detected the CLINC150/BANKING77 abrupt drifts
    within 127 labelled events. The label-free defaults trade speed for quiet the same
    way: with alpha 0.01 and a 300-prediction reference the low-confidence share (~25% of
    traffic for these models) crossed its line on drift-free traffic in 1 of 20 seeds.

    Frozen and hashable; lists become tuples. An invalid value raises a ``ValidationError``
    (a ``ValueError``) saying "<field> must be <what was expected>".
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False
    )

    signals: tuple[SignalName, ...] = Field(
        default=("ewma",),
        description="Signals that count toward a decay decision: ewma (accuracy EWMA vs "
        "reference), adwin, page_hinkley (river, on the error stream), confidence, "
        "low_confidence_share, oos_share (label-free).",
    )
    mode: MonitorMode = Field(
        default="any",
        description="any: one listed signal decides; all: every listed signal must have fired.",
    )
    # labelled outcomes, or predictions when only label-free signals are listed
    min_samples: int = Field(
        default=200, ge=0, description="Labelled outcomes of the serving model before any decision."
    )
    cooldown_s: float = Field(
        default=60.0, ge=0, description="No decay decision within this long of the previous one."
    )
    ewma_alpha: float = Field(
        default=0.003,
        gt=0,
        le=1,
        description="EWMA weight of the newest outcome (about 1/alpha outcomes of memory).",
    )
    ewma_relative_drop: float = Field(
        default=0.10,
        gt=0,
        lt=1,
        description="Decay when the accuracy EWMA falls below reference * (1 - this).",
    )
    ewma_warmup: int = Field(
        default=500,
        ge=1,
        description="Outcomes after a model change whose mean accuracy becomes the reference.",
    )
    ewma_hysteresis: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Re-armed only above reference * (1 - relative_drop * this).",
    )
    adwin_delta: float = Field(
        default=0.002, gt=0, lt=1, description="river ADWIN confidence parameter."
    )
    page_hinkley_threshold: float = Field(
        default=50.0, gt=0, description="river PageHinkley threshold."
    )
    page_hinkley_min_instances: int = Field(
        default=30, ge=1, description="river PageHinkley warm-up."
    )
    label_free_alpha: float = Field(
        default=0.005, gt=0, le=1, description="EWMA weight of the label-free signals."
    )
    low_confidence: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="A prediction below this confidence counts as low-confidence.",
    )
    oos_intents: tuple[str, ...] = Field(
        default=("oos",), description="Intents that mean out of scope."
    )
    label_free_warmup: int = Field(
        default=500,
        ge=1,
        description="Predictions after a model change that set the label-free references.",
    )
    label_free_relative_change: float = Field(
        default=0.15,
        gt=0,
        lt=1,
        description="Relative change of a label-free signal that fires it.",
    )
    window_size: int = Field(
        default=500,
        ge=1,
        description="Labelled outcomes in the live accuracy window (metrics, status).",
    )
    min_accuracy: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Poor-quality trigger, decided whatever signals and mode say: a window "
        "accuracy below this floor (after min_samples labelled outcomes) "
        "starts a fine-tune even though accuracy never dropped (a model wrong "
        "from the start). 0 turns it off.",
    )
    unknown_intent_min: int = Field(
        default=30,
        ge=0,
        description="Poor-quality trigger: this many labelled outcomes (since the model "
        "started serving) whose true intent the model has no output for start "
        "a fine-tune (a new intent, a new taxonomy). 0 turns it off.",
    )

    @field_validator("*", mode="wrap")
    @classmethod
    def _say_what_was_expected(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        # pydantic's own messages ("Input should be ...") do not name the field outside the daemon
        try:
            return handler(value)
        except ValidationError:
            name = info.field_name or "?"
            raise _invalid(name, f"be {_expected(cls.model_fields[name])}") from None

    @field_validator("signals", mode="before")
    @classmethod
    def _distinct_known_signals(cls, signals: Any) -> Any:
        if isinstance(signals, str) or not all(isinstance(s, str) for s in signals):
            raise _invalid("signals", "be a list of strings")
        if not signals:
            raise _invalid("signals", f"name at least one of {', '.join(_SIGNAL_NAMES)}")
        if any(s not in _SIGNAL_NAMES for s in signals) or len(set(signals)) != len(signals):
            names = ", ".join(_SIGNAL_NAMES)
            raise _invalid("signals", f"be distinct names among {names}, got {list(signals)!r}")
        return signals

    @cached_property  # read per streamed event (DecayMonitor._decide); the config is frozen
    def needs_labels(self) -> bool:
        return any(s in get_args(DetectorName) for s in self.signals)

    def replace(self, **changes: Any) -> MonitorConfig:
        """A copy with ``changes``, validated (``model_copy(update=...)`` is not)."""
        return self.model_validate({**self.model_dump(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def _expected(field: FieldInfo) -> str:
    """What a field accepts, in words: "one of any, all", "an int >= 0", "in (0, 1]"."""
    if get_origin(field.annotation) is Literal:
        return f"one of {', '.join(map(str, get_args(field.annotation)))}"
    if get_origin(field.annotation) is tuple:
        return "a list of strings"
    low = next((m for m in field.metadata if isinstance(m, (Ge, Gt))), None)
    high = next((m for m in field.metadata if isinstance(m, (Le, Lt))), None)
    if low is not None and high is not None:
        opening = "(" if isinstance(low, Gt) else "["
        closing = ")" if isinstance(high, Lt) else "]"
        return f"in {opening}{_bound(low)}, {_bound(high)}{closing}"
    kind = "an int" if field.annotation is int else "a finite number"
    if low is not None:
        return f"{kind} {'>' if isinstance(low, Gt) else '>='} {_bound(low)}"
    return kind


def _bound(limit: Ge | Gt | Le | Lt) -> object:
    if isinstance(limit, Ge):
        return limit.ge
    if isinstance(limit, Gt):
        return limit.gt
    return limit.le if isinstance(limit, Le) else limit.lt


def _invalid(name: str, requirement: str) -> PydanticCustomError:
    """An error whose message names the field: "<name> must <requirement>"."""
    return PydanticCustomError(
        "invalid_setting", "{name} must {requirement}", {"name": name, "requirement": requirement}
    )
