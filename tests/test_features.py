import pytest
from PIL import Image

from hf_counterfactual import COUNTERFACTUAL_FEATURES, InvalidRecordError, normalize_caption, validate_record


def record(**overrides):
    image = Image.new("RGB", (8, 8))
    base = {
        "image": image,
        "caption": "a red circle",
        "paraphrases": ["one red circle"],
        "counterfactuals": [{"caption": "a blue circle", "image": image, "edit": "attribute", "source": "rule", "score": None}],
    }
    return {**base, **overrides}


def test_a_good_record_passes_and_encodes():
    validate_record(record(), row=0, min_counterfactuals=1)
    encoded = COUNTERFACTUAL_FEATURES.encode_example(record())
    assert encoded["counterfactuals"][0]["caption"] == "a blue circle"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"caption": ""}, r"row 7, field 'caption': expected a non-empty string"),
        ({"image": None}, r"row 7, field 'image': expected an image, got NoneType"),
        ({"paraphrases": ["ok", 3]}, r"row 7, field 'paraphrases\[1\]'"),
        ({"paraphrases": "one red circle"}, r"row 7, field 'paraphrases': expected a list, got str"),
        ({"counterfactuals": "a blue circle"}, r"row 7, field 'counterfactuals': expected a list, got str"),
        ({"counterfactuals": ["a blue circle"]}, r"row 7, field 'counterfactuals\[0\]': expected a mapping .* got str"),
        ({"counterfactuals": [{"caption": "a red circle", "image": None, "edit": "x", "source": "y"}]}, r"counterfactuals\[0\].caption.*also a true caption"),
        ({"counterfactuals": [{"caption": "one red circle", "image": None, "edit": "x", "source": "y"}]}, r"also a true caption"),
        # The same caption up to case and whitespace: the same token ids, so a negative of itself.
        ({"counterfactuals": [{"caption": "A  Red\tcircle ", "image": None, "edit": "x", "source": "y"}]}, r"row 7, field 'counterfactuals\[0\].caption'.*also a true caption.*up to case and whitespace"),
        ({"counterfactuals": [{"caption": "ONE red  circle", "image": None, "edit": "x", "source": "y"}]}, r"counterfactuals\[0\].caption.*also a true caption"),
        ({"counterfactuals": [{"caption": "a blue circle", "image": "x.png", "edit": "x", "source": "y"}]}, r"counterfactuals\[0\].image"),
        ({"counterfactuals": [{"caption": "a blue circle", "image": None, "edit": "", "source": "y"}]}, r"counterfactuals\[0\].edit"),
    ],
)
def test_bad_records_name_row_and_field(overrides, message):
    with pytest.raises(InvalidRecordError, match=message):
        validate_record(record(**overrides), row=7)


def test_too_few_counterfactuals():
    with pytest.raises(InvalidRecordError, match=r"has 1 counterfactual\(s\), at least 4 are required"):
        validate_record(record(), min_counterfactuals=4)


@pytest.mark.parametrize(
    "text, expected",
    [("A dog", "a dog"), ("  a \t dog\n", "a dog"), ("a  Black DOG", "a black dog"), ("Straße", "strasse"), ("a dog.", "a dog.")],
)
def test_normalize_caption_casefolds_and_collapses_whitespace(text, expected):
    assert normalize_caption(text) == expected


def test_captions_that_differ_in_words_still_pass():
    validate_record(record(counterfactuals=[{"caption": "a red  square", "image": None, "edit": "x", "source": "y"}]), row=0)


@pytest.mark.parametrize("bad", [None, "a red circle", ["a red circle"]])
def test_a_record_that_is_not_a_mapping_names_the_row(bad):
    with pytest.raises(InvalidRecordError, match=r"row 3: expected a record"):
        validate_record(bad, row=3)
