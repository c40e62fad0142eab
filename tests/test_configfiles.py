"""Configuration files: where they are, what they hold, where each value came from."""

from __future__ import annotations

import os

import pytest

from assetcache._configfiles import (
    find_project_file,
    load_files,
    read_project,
    read_user,
    user_config_path,
)
from assetcache._errors import ConfigurationError


def test_user_file_lives_in_the_platformdirs_config_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    path = user_config_path({})
    assert path is not None and path.name == "config.toml" and path.parent.name == "assetcache"
    assert user_config_path({"ASSETCACHE_CONFIG": str(tmp_path / "c.toml")}) == tmp_path / "c.toml"
    assert user_config_path({"ASSETCACHE_CONFIG": ""}) is None


def test_nearest_pyproject_wins(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.assetcache]\ndb = "outer.db"\n')
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    assert find_project_file(inner) == tmp_path / "pyproject.toml"
    (tmp_path / "a" / "pyproject.toml").write_text('[tool.assetcache]\ndb = "inner.db"\n')
    found = read_project(find_project_file(inner), path_keys=["db"])
    assert found is not None
    assert found.values == {"db": str(tmp_path / "a" / "inner.db")}
    assert str(tmp_path / "a" / "pyproject.toml") in found.origin


def test_project_without_our_table_provides_nothing(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "x"\n')
    assert read_project(path) is None


@pytest.mark.parametrize(
    "text",
    [
        '[tool]\nassetcache = { db = "t.db" }\n',
        '[tool]\n"assetcache".db = "t.db"\n',
        'tool.assetcache.db = "t.db"\n',
        '[project.scripts]\nassetcache = "a:b"\n[ tool . "assetcache" ]\ndb = "t.db"\n',
    ],
)
def test_every_spelling_of_our_table_is_read(tmp_path, text):
    path = tmp_path / "pyproject.toml"
    path.write_text(text)
    found = read_project(path, path_keys=["db"])
    assert found is not None and found.values == {"db": str(tmp_path / "t.db")}


def test_a_script_or_package_named_assetcache_is_not_our_table(tmp_path):
    """Such a project (this one) is not parsed at all: not even a TOML error there counts."""
    path = tmp_path / "pyproject.toml"
    path.write_text(
        '[project.scripts]\nassetcache = "assetcache._cli:run"\n'
        '[tool.setuptools.package-data]\nassetcache = ["py.typed"]\n'
        "[broken\n"
    )
    assert read_project(path) is None


def test_kebab_keys_paths_relative_to_the_file_and_urls_untouched(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text(
        "[tool.assetcache]\n"
        'api-url = "http://127.0.0.1:9/v1"\n'
        'copies-dir = "copies"\n'
        'db = "postgresql://u@h/db"\n'
        "keep-copies = true\n"
    )
    found = read_project(path, path_keys=["db", "copies_dir"])
    assert found is not None
    assert found.values == {
        "api_url": "http://127.0.0.1:9/v1",
        "copies_dir": str(tmp_path / "copies"),
        "db": "postgresql://u@h/db",
        "keep_copies": True,
    }


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("db = \n")
    with pytest.raises(ConfigurationError, match="config.toml is not valid TOML"):
        read_user(path)


def test_api_key_never_from_a_project_file(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.assetcache]\napi_key = "secret-123"\n')
    with pytest.raises(ConfigurationError) as info:
        read_project(path)
    assert "secret-123" not in str(info.value)
    assert "never holds the API key" in str(info.value)


def test_shared_db_never_from_a_project_file(tmp_path):
    # Whoever can write a shared project file could point it at a database they
    # write and vouch for it in the same breath.
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.assetcache]\nshared_db = true\n")
    with pytest.raises(ConfigurationError, match="cannot vouch"):
        read_project(path)
    user = tmp_path / "config.toml"
    user.write_text("shared_db = true\n")
    found = read_user(user)
    assert found is not None and found.values == {"shared_db": True}


def test_api_key_only_from_a_private_user_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('api_key = "secret-123"\n')
    os.chmod(path, 0o644)
    with pytest.raises(ConfigurationError) as info:
        read_user(path)
    assert "secret-123" not in str(info.value)
    assert "chmod 600" in str(info.value)
    os.chmod(path, 0o640)
    with pytest.raises(ConfigurationError):
        read_user(path)
    os.chmod(path, 0o600)
    found = read_user(path)
    assert found is not None and found.values == {"api_key": "secret-123"}


def test_load_files_user_then_project(tmp_path):
    user = tmp_path / "user.toml"
    user.write_text("keep_copies = true\n")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text('[tool.assetcache]\ndb = "x.db"\n')
    files = load_files(cwd=project, env={"ASSETCACHE_CONFIG": str(user)}, path_keys=["db"])
    assert [f.kind for f in files] == ["user", "project"]
    assert files[1].values["db"] == str(project / "x.db")
    none = load_files(
        cwd=project, env={"ASSETCACHE_CONFIG": "", "ASSETCACHE_NO_PROJECT_CONFIG": "1"}
    )
    assert none == []
    missing = load_files(cwd=tmp_path, env={"ASSETCACHE_CONFIG": str(tmp_path / "nope.toml")})
    assert [f.kind for f in missing] == []


def test_a_table_value_is_an_error(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[db]\npath = 'x'\n")
    with pytest.raises(ConfigurationError, match="is a table"):
        read_user(path)


def test_settings_and_config_agree_on_the_default_endpoint():
    from assetcache import _config, _settings

    assert _settings.DEFAULT_API_URL == _config.DEFAULT_API_URL


def test_one_table_of_settings_reaches_every_keyword(tmp_path, monkeypatch):
    """Every setting ``resolve`` takes has one row in ``_settings.SETTINGS``: the
    tunables too (a project file sets them like any other)."""
    import inspect

    from assetcache import _config, _settings

    assert not hasattr(_config, "SETTINGS")
    kwargs = {s.kwarg for s in _settings.SETTINGS}
    params = set(inspect.signature(_config.resolve).parameters)
    # Aliases and objects that are not settings of their own.
    assert params - kwargs == {"db", "retry", "task_type", "environ"}
    (tmp_path / "pyproject.toml").write_text(
        "[tool.assetcache]\n"
        'host_id = "render-7"\n'
        'batch_bytes = "2M"\n'
        'racy_window = "5s"\n'
        'namespace = "team-a"\n'
    )
    monkeypatch.chdir(tmp_path)
    env = {"ASSETCACHE_CONFIG": ""}  # no user file
    cfg = _config.resolve(api_key="k", db=str(tmp_path / "c.db"), environ=env)
    assert (cfg.host_id, cfg.batch_bytes, cfg.racy_ns, cfg.namespace) == (
        "render-7",
        2 << 20,
        5_000_000_000,
        "team-a",
    )
    # The environment wins over the project file; an argument over both.
    env["ASSETCACHE_HOST_ID"] = "render-8"
    assert _config.resolve(api_key="k", db=":memory:", environ=env).host_id == "render-8"
    cfg = _config.resolve(api_key="k", db=":memory:", environ=env, host_id="h", batch_bytes=99)
    assert (cfg.host_id, cfg.batch_bytes) == ("h", 99)
    # A negative window would count every file as safely hashed: refused, by name.
    with pytest.raises(ConfigurationError, match="racy_window"):
        _config.resolve(api_key="k", db=":memory:", environ=env, racy_window=-1)
