import pytest
from pydantic import BaseModel, ConfigDict

from breastgan.registry import ConfigArgumentError, Registry, RegistryError


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = 4


def test_register_build_and_errors():
    reg: Registry = Registry("widget")

    @reg.register("box", args=Args, summary="a box")
    def box(width):
        return ("box", width)

    assert reg.build("box", {"width": 7}) == ("box", 7)
    assert reg.names() == ["box"] and "box" in reg and len(reg) == 1
    with pytest.raises(RegistryError, match="unknown widget 'ball'; available: box"):
        reg.get("ball")
    with pytest.raises(ConfigArgumentError, match="depth: unknown option for 'box'; allowed options: width"):
        reg.build("box", {"depth": 1})
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("box")(box)
