import errno
import json
import os

import pytest

from labkit.engine import logs
from labkit.engine.errors import Invalid
from labkit.engine.logs import JsonFileWriter, LogEntry, LogOptions, read_logs

T0 = 1_700_000_000 * 10**9


def test_line_format_is_dockers():
    line = LogEntry("stdout", "hi\n", T0 + 120_000_000).to_json_line()
    assert line == b'{"log":"hi\\n","stream":"stdout","time":"2023-11-14T22:13:20.12Z"}\n'
    assert LogEntry.from_json_line(line) == LogEntry("stdout", "hi\n", T0 + 120_000_000)


def test_log_path_is_dockers():
    assert logs.log_path("/d", "abc") == "/d/abc-json.log"


@pytest.mark.parametrize("text, n", [("10m", 10_000_000), ("1k", 1000), ("512", 512),
                                     ("1.5g", 1_500_000_000), ("2MB", 2_000_000)])
def test_parse_size(text, n):
    assert logs.parse_size(text) == n


def test_parse_log_opts():
    assert logs.parse_log_opts({}) == LogOptions(None, 1)
    assert logs.parse_log_opts({"max-size": "1k", "max-file": "3"}) == LogOptions(1000, 3)
    for bad, words in [({"max-size": "0"}, "max-size must be a positive number"),
                       ({"max-file": "0"}, "max-file cannot be less than 1"),
                       ({"max-size": "lots"}, "invalid size"),
                       ({"colour": "red"}, "unknown log opt 'colour' for json-file log driver")]:
        with pytest.raises(Invalid, match=words):
            logs.parse_log_opts(bad)


def write_lines(path, n, opts=LogOptions(), stream="stdout"):
    with JsonFileWriter(path, opts) as w:
        for i in range(n):
            assert w.write(stream if i % 2 == 0 else "stderr", f"line {i}\n", T0 + i * 10**9)


def test_writer_appends_and_reader_reads(tmp_path):
    p = str(tmp_path / "c-json.log")
    write_lines(p, 4)
    write_lines(p, 0)  # reopening appends, does not truncate
    got = read_logs(p)
    assert [e.log for e in got] == [f"line {i}\n" for i in range(4)]
    assert [e.stream for e in got] == ["stdout", "stderr"] * 2
    assert all(json.loads(l) for l in open(p))


def test_rotation_names_and_keeps_max_file(tmp_path):
    p = str(tmp_path / "c-json.log")
    one = len(LogEntry("stdout", "line 0\n", T0).to_json_line())
    write_lines(p, 20, LogOptions(max_size=one * 3, max_file=3))
    assert sorted(os.listdir(tmp_path)) == ["c-json.log", "c-json.log.1", "c-json.log.2"]
    assert all(os.path.getsize(f) <= one * 3 for f in logs.log_files(p))
    # "line 1x" is a byte longer than "line 0": two per file; oldest file first.
    per_file = [[e.log.split()[1] for e in logs.entries_in(f)] for f in logs.log_files(p)]
    assert per_file == [["15", "16"], ["17", "18"], ["19"]]
    assert [e.log for e in read_logs(p)] == [f"line {i}\n" for i in range(15, 20)]


def test_rotation_with_one_file_truncates(tmp_path):
    p = str(tmp_path / "c-json.log")
    one = len(LogEntry("stdout", "line 0\n", T0).to_json_line())
    write_lines(p, 5, LogOptions(max_size=one * 2, max_file=1))
    assert os.listdir(tmp_path) == ["c-json.log"]
    assert [e.log for e in read_logs(p)] == ["line 4\n"]


def test_tail_since_until_streams(tmp_path):
    p = str(tmp_path / "c-json.log")
    write_lines(p, 10)
    assert [e.log for e in read_logs(p, tail=2)] == ["line 8\n", "line 9\n"]
    assert read_logs(p, tail=0) == []
    assert len(read_logs(p, tail=-1)) == 10
    assert [e.log for e in read_logs(p, since=T0 + 7 * 10**9)] == ["line 7\n", "line 8\n", "line 9\n"]
    assert [e.log for e in read_logs(p, until=T0 + 2 * 10**9)] == ["line 0\n", "line 1\n"]
    assert {e.stream for e in read_logs(p, stderr=False)} == {"stdout"}
    # Docker applies tail before the stream filter: the last 2 lines hold one stderr line.
    assert [e.log for e in read_logs(p, tail=2, stdout=False)] == ["line 9\n"]


def test_parse_tail():
    assert logs.parse_tail("all") is None and logs.parse_tail("5") == 5
    with pytest.raises(Invalid):
        logs.parse_tail("some")


def test_timestamps_format():
    e = LogEntry("stdout", "hi\n", T0 + 5)
    assert logs.format_entry(e) == "hi\n"
    assert logs.format_entry(e, timestamps=True) == "2023-11-14T22:13:20.000000005Z hi\n"


def test_torn_last_line_is_skipped(tmp_path):
    p = str(tmp_path / "c-json.log")
    write_lines(p, 2)
    with open(p, "ab") as f:
        f.write(b'{"log":"cut')
    assert len(read_logs(p)) == 2


class FullDisk:
    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        pass

    def close(self):
        pass


def test_full_disk_drops_and_counts(tmp_path):
    w = JsonFileWriter(str(tmp_path / "c-json.log"), opener=lambda p: FullDisk())
    assert w.write("stdout", "a\n") is False
    assert w.write("stderr", b"b\n") is False
    assert w.dropped == 2 and w.last_error.errno == errno.ENOSPC
    w.close()


def test_unopenable_log_does_not_raise(tmp_path):
    w = JsonFileWriter(str(tmp_path / "missing-dir" / "c-json.log"))
    assert w.write("stdout", "a\n") is False and w.dropped == 1


def test_bad_stream_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError):
        JsonFileWriter(str(tmp_path / "x")).write("stdin", "a")


def test_write_lines_matches_write_and_rotates_between_lines(tmp_path):
    from labkit.engine.logs import JsonFileWriter, LogOptions, read_logs

    one, many = str(tmp_path / "one.log"), str(tmp_path / "many.log")
    lines = [f"line-{i}\n".encode() for i in range(50)]
    with JsonFileWriter(one, LogOptions(max_size=300, max_file=3)) as w:
        for line in lines:
            w.write("stdout", line, 1_700_000_000_123_456_789)
    with JsonFileWriter(many, LogOptions(max_size=300, max_file=3)) as w:
        encoded = w.write_lines("stdout", lines, 1_700_000_000_123_456_789)
    for suffix in ("", ".1", ".2"):
        assert open(one + suffix, "rb").read() == open(many + suffix, "rb").read()
    assert encoded.count(b"\n") == 50 and [e.log for e in read_logs(many)] == [l.decode() for l in lines[-len(read_logs(many)):]]
