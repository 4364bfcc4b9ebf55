"""A query the model cannot read is answered with a note, not with silent confident results."""

from xmcore.cli import main


def lstm(plugins, captions):
    from xmcore.registry import BuildContext

    component = plugins["encoder"].get("lstm")
    params = component.params.model_validate({"embed_dim": 8, "hidden": 8, "max_length": 6})
    return component.build(params, BuildContext(modality="text", train_items=lambda: captions))


def test_the_lstm_says_when_most_words_are_unknown(plugins):
    encoder = lstm(plugins, ["a red circle left of a blue square", "a green triangle"])
    assert encoder.query_warnings("a red circle") == []
    assert encoder.query_warnings("a green zorblax") == []  # one unknown word of three: fine
    (note,) = encoder.query_warnings("a zorblax quux")
    assert note.startswith("2 of the query's 3 words are unknown to the text model (zorblax, quux)")
    (note,) = encoder.query_warnings("\U0001f600" * 1000)
    assert "no words the text model can read" in note
    (note,) = encoder.query_warnings("a red circle left of a blue square and a green triangle")
    assert "reads only the first 6 words" in note


def test_the_core_encoder_has_no_notes_by_default():
    from xmcore.components import Encoder

    assert Encoder().query_warnings("anything") == []


def test_search_prints_a_note_beside_its_results(gallery_index, capsys):
    assert main(["search", str(gallery_index), "--text", "\U0001f600" * 1000, "-k", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("[") and err.startswith("note: the query has no words the text model can read")
    assert main(["search", str(gallery_index), "--text", "a red circle left of a blue square", "-k", "2"]) == 0
    assert "note:" not in capsys.readouterr().err
