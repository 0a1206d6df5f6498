import minilora


def test_version_is_a_string():
    assert isinstance(minilora.__version__, str)
