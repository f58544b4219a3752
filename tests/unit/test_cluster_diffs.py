"""What ``cluster plan --diff`` prints from a task's result (appliance/cluster/diffs.py): the
shapes Ansible's modules give a diff in, each as a unified diff, and nothing where nothing differs."""

from __future__ import annotations

from appliance.cluster.diffs import task_diffs


def test_a_files_text_before_and_after_reads_as_diff_u() -> None:
    result = {
        "diff": {
            "before_header": "/etc/systemd/system/appliance-mlflow.service",
            "after_header": "/etc/systemd/system/appliance-mlflow.service",
            "before": "[Service]\nExecStart=mlflow server --workers 1\n",
            "after": "[Service]\nExecStart=mlflow server --workers 2\n",
        }
    }
    (text,) = task_diffs(result)
    assert text.splitlines() == [
        "--- before: /etc/systemd/system/appliance-mlflow.service",
        "+++ after: /etc/systemd/system/appliance-mlflow.service",
        "@@ -1,2 +1,2 @@",
        " [Service]",
        "-ExecStart=mlflow server --workers 1",
        "+ExecStart=mlflow server --workers 2",
    ]


def test_every_shape_a_module_gives_is_read_and_equal_sides_show_nothing() -> None:
    result = {
        # the one-call writer: a list, one per file; a new file without a final newline
        "diff": [
            {"before_header": "/x/a (no file)", "after_header": "/x/a", "before": "", "after": "k=v"},
            {"before_header": "/x/b", "after_header": "/x/b", "before": "same\n", "after": "same\n"},
        ],
        # a loop: each item's own, one of them the file module's attributes, one apt's prepared text
        "results": [
            {
                "diff": {
                    "before": {"path": "/x/c", "state": "absent"},
                    "after": {"path": "/x/c", "state": "directory"},
                }
            },
            {"diff": {"prepared": "The following NEW packages will be installed:\n  nginx\n"}},
            {"changed": False},
            "not a dict",
        ],
    }
    texts = task_diffs(result)
    assert len(texts) == 3, texts
    assert texts[0].splitlines()[-2:] == ["+k=v", "\\ No newline at end of file"]
    assert '-  "state": "absent"' in texts[1] and '+  "state": "directory"' in texts[1]
    assert texts[2] == "The following NEW packages will be installed:\n  nginx\n"


def test_a_file_ansible_would_not_show_is_named_with_why() -> None:
    result = {
        "diff": {"before_header": "/d/x.tar", "after_header": "/src/x.tar", "src_binary": 1, "dst_larger": 1}
    }
    assert task_diffs(result) == [
        "--- before: /d/x.tar\n+++ after: /src/x.tar\n(content not shown: src binary, dst larger)\n"
    ]


def test_a_censored_result_or_none_at_all_gives_nothing() -> None:
    assert task_diffs({"censored": "the output has been hidden due to the fact that 'no_log: true'"}) == []
    assert task_diffs({}) == []
    assert task_diffs({"diff": "not a dict", "results": None}) == []
    assert task_diffs({"results": 3}) == [] and task_diffs({"results": "text"}) == []
