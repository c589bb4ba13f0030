import pytest

from picluster.bounded import LimitError, load_json, load_yaml


@pytest.mark.parametrize("text", ["[" * 10_000 + "]" * 10_000, '{"a": ' * 33 + "1" + "}" * 33])
def test_json_nested_too_deep_is_refused_before_parsing(text: str) -> None:
    with pytest.raises(LimitError, match="line 1: nested deeper than 32 levels"):
        load_json(text, max_size=1 << 20)


def test_json_within_bounds_parses_and_brackets_in_strings_do_not_count() -> None:
    assert load_json('["' + "[" * 100 + '", [1]]', max_size=1 << 10) == ["[" * 100, [1]]
    assert load_json("[" * 32 + "]" * 32, max_size=1 << 10) is not None
    with pytest.raises(LimitError, match="is 2000 bytes, over the limit of 1024 bytes"):
        load_json("[" + " " * 1998 + "]", max_size=1 << 10)
    with pytest.raises(LimitError, match="over the limit"):  # bytes, not characters
        load_json('"' + "é" * 600 + '"', max_size=1 << 10)


@pytest.mark.parametrize("text", ["[" * 10_000 + "]" * 10_000, "- " * 40 + "x",
                                  "a:\n" + "".join("  " * i + "b:\n" for i in range(1, 40))])
def test_yaml_nested_too_deep_is_refused_as_it_is_reached(text: str) -> None:
    with pytest.raises(LimitError, match="nested deeper than 32 levels"):
        load_yaml(text, max_size=1 << 20)


def test_yaml_within_bounds_parses() -> None:
    assert load_yaml("a: [1, {b: 2}]\nc: &x [1]\nd: *x\n", max_size=1 << 10) == \
        {"a": [1, {"b": 2}], "c": [1], "d": [1]}
    with pytest.raises(LimitError, match="over the limit"):
        load_yaml("x: " + "y" * 2000, max_size=1 << 10)
