"""The generic Registry: registration, duplicate names, did-you-mean misses, descriptions, listing."""

from __future__ import annotations

import pytest

from alignkit.algorithms import ALGORITHMS
from alignkit.data.generators import DATASETS
from alignkit.models import ARCHITECTURES
from alignkit.registry import Registry, RegistryError, did_you_mean
from alignkit.rewards import REWARDS


@pytest.fixture
def colors() -> Registry:
    reg: Registry = Registry("color")

    @reg.register("red")
    class Red:
        """Warm.

        The second line is not part of the description.
        """

    reg.add("green", object(), description="Given explicitly")
    reg.add("blue", lambda: None)  # a lambda has no docstring: empty description
    return reg


def test_register_and_get(colors: Registry) -> None:
    assert colors.get("red").__name__ == "Red"
    assert colors.names() == ["blue", "green", "red"]  # sorted, whatever the order of registration
    assert list(colors) == colors.names()
    assert len(colors) == 3
    assert "red" in colors and "purple" not in colors


def test_register_decorator_returns_the_object_unchanged() -> None:
    reg: Registry = Registry("fn")

    def f() -> int:
        return 1

    assert reg.register("f")(f) is f


def test_duplicate_name_is_an_error(colors: Registry) -> None:
    with pytest.raises(RegistryError, match=r"^color 'red' is registered twice; pick another name$"):
        colors.add("red", object())
    assert colors.get("red").__name__ == "Red"  # the first registration stands


def test_unknown_name_lists_allowed_names_and_suggests(colors: Registry) -> None:
    with pytest.raises(RegistryError) as err:
        colors.get("gren")
    assert str(err.value) == "unknown color 'gren'; allowed: blue, green, red; did you mean 'green'?"
    assert isinstance(err.value, KeyError)  # callers may catch KeyError


def test_unknown_name_far_from_everything_has_no_suggestion(colors: Registry) -> None:
    assert str(colors.unknown_message("xyzzy")) == "unknown color 'xyzzy'; allowed: blue, green, red"


def test_did_you_mean() -> None:
    assert did_you_mean("dpoo", ["dpo", "ppo", "kto"]) == "; did you mean 'dpo'?"
    assert did_you_mean("zzz", ["dpo", "ppo"]) == ""
    assert did_you_mean("x", []) == ""


def test_describe_uses_first_docstring_line_or_the_given_text(colors: Registry) -> None:
    assert colors.describe() == [("blue", ""), ("green", "Given explicitly"), ("red", "Warm.")]


@pytest.mark.parametrize("registry", [ALGORITHMS, ARCHITECTURES, DATASETS, REWARDS], ids=lambda r: r.kind)
def test_every_registered_component_has_a_description(registry: Registry) -> None:
    """`alignkit list` shows these; a component without a docstring would show a blank line."""
    assert len(registry) > 0
    for name, description in registry.describe():
        assert description, f"{registry.kind} '{name}' has no description (give it a docstring)"


def test_algorithm_names_match_their_config_name() -> None:
    """YAML selects an algorithm by `algorithm.name`; it must equal the name it is registered under."""
    for name in ALGORITHMS.names():
        algo = ALGORITHMS.get(name)
        assert algo.name == name
        assert algo.Config.model_fields["name"].default == name
        assert set(algo.required_models) <= set(algo.models)
        assert set(algo.trained) <= set(algo.models)


def test_every_card_loads_the_class_that_carries_it() -> None:
    """A card names its module as text (so reading configs imports no torch); the name must resolve, and the
    class it finds must carry that same card (its sections, data kind and options)."""
    for name in ALGORITHMS.names():
        card = ALGORITHMS.get(name)
        assert card.load().card is card, name
