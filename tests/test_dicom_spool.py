"""The spool: durable, owner-only, invalid UIDs refused, interrupted writes discarded on restart."""

from __future__ import annotations

import stat

import pytest

from osteo_edge.dicom.spool import Spool, valid_uid
from osteo_edge.errors import ConfigError


def test_spool_put_pending_done_and_restart(tmp_path):
    sp = Spool(tmp_path / "spool")
    assert stat.S_IMODE(sp.root.stat().st_mode) == 0o700 and stat.S_IMODE(sp.incoming.stat().st_mode) == 0o700
    a = sp.put("1.2.3", b"first", {"calling_ae": "CR1"})
    b = sp.put("1.2.4", b"second", {})
    sp.put("1.2.3", b"first again", {"calling_ae": "CR2"})  # a re-send replaces, never duplicates
    assert stat.S_IMODE(a.stat().st_mode) == 0o600
    assert sorted(p.name for p in sp.pending()) == ["1.2.3.dcm", "1.2.4.dcm"]
    assert sp.info(a) == {"calling_ae": "CR2"} and a.read_bytes() == b"first again"
    (sp.incoming / ".1.2.5.dcm.99.1.tmp").write_bytes(b"half")  # a write a crash interrupted
    sp.done(b)
    again = Spool(tmp_path / "spool")
    assert [p.name for p in again.pending()] == ["1.2.3.dcm"]
    assert sorted(p.name for p in again.incoming.iterdir()) == ["1.2.3.dcm", "1.2.3.json"]
    failed = again.fail(a)
    assert failed.parent.name == "failed" and again.pending() == []


@pytest.mark.parametrize("uid", ["", "1..2", "../../etc/passwd", "1.2.a", "1." + "2" * 70])
def test_invalid_uids_never_become_file_names(tmp_path, uid):
    assert not valid_uid(uid)
    with pytest.raises(ConfigError, match="invalid SOP Instance UID"):
        Spool(tmp_path / "s").put(uid, b"x", {})
