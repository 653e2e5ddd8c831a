import pytest

from tollhouse.paths import BadPath, normalise_path


@pytest.mark.parametrize("raw,normal", [
    (b"/", b"/"),
    (b"/api/users/7", b"/api/users/7"),
    (b"/a/../admin", b"/admin"),
    (b"/%61dmin", b"/admin"),
    (b"//admin", b"/admin"),
    (b"/a//b///c", b"/a/b/c"),
    (b"/public/%2e%2e/admin", b"/admin"),
    (b"/public/%2E%2e/admin", b"/admin"),
    (b"/public/..;/admin", b"/admin"),
    (b"/admin;jsessionid=x/panel", b"/admin/panel"),
    (b"/./a/./b", b"/a/b"),
    (b"/../../etc/passwd", b"/etc/passwd"),
    (b"/a/b/..", b"/a/"),
    (b"/dir/", b"/dir/"),
    (b"/caf%c3%a9", b"/caf%C3%A9"),
    (b"/a%20b", b"/a%20B"[:0] + b"/a%20b"),
    (b"/%7euser", b"/~user"),
])
def test_normal_forms(raw, normal):
    assert normalise_path(raw) == normal


@pytest.mark.parametrize("raw", [b"/a%2fb", b"/a%2Fb", b"/a%5cb", b"/a\\b", b"/a%00", b"/a%zz", b"/a%4", b"noslash"])
def test_ambiguous_paths_are_refused(raw):
    with pytest.raises(BadPath):
        normalise_path(raw)


def test_normalisation_is_idempotent():
    for raw in (b"/a/../b/./c//d", b"/%61/%2e/x;y/..;/z"):
        once = normalise_path(raw)
        assert normalise_path(once) == once
