"""What gateware a simulation or a bitstream contains: an engine by name plus link parameters.

The engine registry is the one place new engines are listed; ``LinkCore`` does not change.
"""
from dataclasses import dataclass, field

from .echo import EchoEngine
from .link.router import LinkCore
from .pixelcnn.engine import ConvEngine
from .sgd.engine import SgdEngine

ENGINES = {
    "conv": ConvEngine,
    "echo": EchoEngine,
    "sgd": SgdEngine,
}


@dataclass(frozen=True)
class Design:
    engine: str = "echo"
    engine_args: dict = field(default_factory=dict)
    max_frame: int = 512

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; known engines: {', '.join(sorted(ENGINES))}")

    def make_engine(self):
        return ENGINES[self.engine](**self.engine_args)

    def make_core(self, extra_params: dict | None = None, crossing: str | None = None) -> LinkCore:
        """The link core with this engine; ``crossing``: see ``LinkCore`` (None: one clock domain)."""
        return LinkCore(self.make_engine(), max_frame=self.max_frame, extra_params=extra_params, crossing=crossing)
