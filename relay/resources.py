"""Files shipped inside the package: the default policy file and its footer templates.

They are package data so an installed relay starts in any directory; `phi-relay init`
copies them out for an operator to edit. relay/defaults/policies is a link to the
repository's policies/ (the one copy); wheels carry the files themselves.
"""

from __future__ import annotations

from pathlib import Path

POLICY_DIR = Path(__file__).resolve().with_name("defaults") / "policies"
DEFAULT_POLICY_FILE = POLICY_DIR / "default.toml"
POLICY_FILES = ("default.toml", "footer.txt", "footer.html")
