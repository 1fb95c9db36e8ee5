import pytest

from embedlab.registry import Registry, check_arguments


class Thing:
    def __init__(self, size: int, colour: str = "red") -> None:
        self.size = size
        self.colour = colour


def test_register_and_build_with_arguments() -> None:
    registry: Registry[Thing] = Registry("thing")
    registry.register(Thing)
    built = registry.build("Thing", size=3, colour="blue")
    assert (built.size, built.colour) == (3, "blue")
    assert "Thing" in registry and registry.names() == ["Thing"]


def test_registering_a_name_twice_is_an_error() -> None:
    registry: Registry[Thing] = Registry("thing")
    registry.register(Thing)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Thing)


def test_unknown_name_lists_valid_names_and_suggests() -> None:
    registry: Registry[Thing] = Registry("thing")
    registry.register(Thing)
    with pytest.raises(ValueError, match=r"unknown thing 'Thingg'.*Did you mean 'Thing'.*Valid names: Thing"):
        registry.get("Thingg")


def test_unknown_argument_is_named_never_dropped() -> None:
    with pytest.raises(TypeError, match=r"does not take 'colour_name'.*Did you mean 'colour'"):
        check_arguments(Thing, {"size": 1, "colour_name": "x"}, "thing 'Thing'")


class Base:
    def __init__(self, reducer: str = "mean") -> None:
        self.reducer = reducer


class PassesKwargsUp(Base):
    def __init__(self, margin: float = 0.1, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.margin = margin


def test_arguments_passed_up_to_base_classes_are_accepted_and_others_named() -> None:
    check_arguments(PassesKwargsUp, {"margin": 0.2, "reducer": "sum"}, "loss")
    with pytest.raises(TypeError, match=r"does not take 'reduce'.*Did you mean 'reducer'"):
        check_arguments(PassesKwargsUp, {"reduce": "sum"}, "loss")
