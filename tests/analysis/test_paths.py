"""Paths in the verdict: the user's own code stands out, libraries are shortened and marked."""

from __future__ import annotations

import sysconfig

from leakyspanner.analysis.paths import short_path, short_site


def test_own_code_is_shown_relative_to_the_project(tmp_path):
    assert short_path(str(tmp_path / "app" / "orders.py"), root=str(tmp_path)) == "app/orders.py"
    assert short_site(f"{tmp_path}/app/orders.py:18", root=str(tmp_path)) == "app/orders.py:18"


def test_installed_packages_and_the_standard_library_are_marked():
    assert short_site("/srv/venv/lib/python3.11/site-packages/starlette/routing.py:77") == \
        "[pkg] starlette/routing.py:77"
    assert short_path("/usr/lib/python3/dist-packages/yaml/reader.py") == "[pkg] yaml/reader.py"
    stdlib = sysconfig.get_paths()["stdlib"]
    assert short_site(f"{stdlib}/json/decoder.py:353") == "[stdlib] json/decoder.py:353"


def test_paths_outside_the_project_and_pseudo_files_stay_whole(tmp_path):
    assert short_path("/elsewhere/app.py", root=str(tmp_path)) == "/elsewhere/app.py"
    assert short_site("<frozen abc>:106") == "<frozen abc>:106"
    assert short_site(None) is None
