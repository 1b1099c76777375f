"""What each request of a run asks: the scenario's request kinds in a fixed order, cycling over the inputs.

A scenario is a weighted mix of request kinds (``ask``: one answer; ``ask-stream``: the streamed answer,
which gives time to first token and inter-token latency; ``segment``: organ masks). The plan is
deterministic, so two runs (or two targets) send the same requests in the same order, which is what a
side-by-side comparison needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadtests.inputs import InputImage

KINDS = ("ask", "ask-stream", "segment")
SCENARIOS: dict[str, dict[str, int]] = {
    "ask": {"ask": 1},
    "ask-stream": {"ask-stream": 1},
    "segment": {"segment": 1},
    # A reading room: a question now and then, a segmentation for every study that arrives.
    "mixed": {"ask-stream": 1, "segment": 3},
}
# Stands for an image the service must refuse: not PNG, JPEG or DICOM, whatever its declared media type says.
INVALID_IMAGE = b"this is not an image"


@dataclass(frozen=True)
class RequestSpec:
    """One request to send: its kind, image, question and options."""

    index: int
    kind: str
    image: InputImage
    question: str
    max_tokens: int
    brief: bool = False
    precision: str = ""
    invalid: bool = False  # send INVALID_IMAGE instead of the image (the service must answer 400 / INVALID_ARGUMENT)

    @property
    def image_data(self) -> bytes:
        """The bytes to send as the image."""
        return INVALID_IMAGE if self.invalid else self.image.data


def parse_mix(text: str) -> dict[str, int]:
    """``ask-stream=1,segment=3`` → weights per kind; unknown kinds or non-positive weights raise ValueError."""
    weights: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = part.partition("=")
        if kind not in KINDS:
            raise ValueError(f"unknown request kind {kind!r} in --mix; kinds: {', '.join(KINDS)}")
        try:
            weights[kind] = int(weight or "1")
        except ValueError:
            raise ValueError(f"--mix weight of {kind} must be an integer, not {weight!r}") from None
        if weights[kind] < 1:
            raise ValueError(f"--mix weight of {kind} must be at least 1")
    if not weights:
        raise ValueError("--mix names no request kind")
    return weights


class RequestPlan:
    """The endless, deterministic sequence of requests of one scenario (see the module docstring).

    Kinds follow a weighted round-robin; images cycle; each image's questions take turns. ``invalid_share``
    of the requests (spread evenly, never the first) carry an image the service must refuse.
    """

    def __init__(self, weights: dict[str, int], inputs: list[InputImage], *, max_tokens: int = 64,
                 brief: bool = False, precision: str = "", invalid_share: float = 0.0):
        if not inputs:
            raise ValueError("a request plan needs at least one input image")
        if not 0.0 <= invalid_share <= 1.0:
            raise ValueError("invalid_share must be within [0, 1]")
        self.cycle = [kind for kind, weight in weights.items() for _ in range(weight)]
        self.kinds = tuple(weights)
        self.inputs = inputs
        self.max_tokens = max_tokens
        self.brief = brief
        self.precision = precision
        self.invalid_share = invalid_share
        self.issued = 0

    @classmethod
    def for_scenario(cls, scenario: str, inputs: list[InputImage], mix: dict[str, int] | None = None,
                     **options) -> "RequestPlan":
        """The plan of a named scenario (``mix`` replaces the weights of ``mixed``)."""
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; scenarios: {', '.join(SCENARIOS)}")
        weights = mix if (scenario == "mixed" and mix) else SCENARIOS[scenario]
        return cls(weights, inputs, **options)

    def _is_invalid(self, index: int) -> bool:
        # Request i is invalid when the running count of invalid requests steps up at i: evenly spread.
        return int((index + 1) * self.invalid_share) > int(index * self.invalid_share)

    def next(self) -> RequestSpec:
        """The next request of the plan."""
        index = self.issued
        self.issued += 1
        kind = self.cycle[index % len(self.cycle)]
        image = self.inputs[index % len(self.inputs)]
        question = image.questions[(index // len(self.inputs)) % len(image.questions)]
        return RequestSpec(index, kind, image, question, self.max_tokens, self.brief, self.precision,
                           self._is_invalid(index))
