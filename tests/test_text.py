from dsum.data.text import TextNormalization, find_masks


def test_normalization_defaults() -> None:
    raw = "#Person1#: 안녕 \\n#Person2#: 네<br>#Person1#: 좋아요  \r\n"
    assert TextNormalization()(raw) == "#Person1#: 안녕\n#Person2#: 네\n#Person1#: 좋아요"


def test_normalization_is_configurable() -> None:
    keep = TextNormalization(literal_newlines=False, br_tags=False, strip_trailing_spaces=False)
    assert keep("a \\n b<br>c ") == "a \\n b<br>c "


def test_find_masks() -> None:
    assert find_masks(["#Person1#은 #PhoneNumber#로", "#Person2#: #Person1#"]) == [
        "#Person1#", "#Person2#", "#PhoneNumber#",
    ]
