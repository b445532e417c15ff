from rentbox.settings import Settings


def test_settings_repr_hides_the_key():
    settings = Settings(api_key="s3cret-value")
    assert "s3cret-value" not in repr(settings)
    assert "api_key=<hidden>" in repr(settings)
