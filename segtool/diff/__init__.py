"""`segtool diff`: versions.py (git refs, folders), changes.py (node by node),
project.py (changes + the plan of HEAD against BASE's state), data.py
(assignments between runs or databases), thresholds.py (--fail-on). Text,
JSON and Markdown come from report/diff.py."""
