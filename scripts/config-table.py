"""Prints the README's configuration table from `facevault --help` (read on stdin)."""
import re
import sys

text = sys.stdin.read().split("Options:", 1)[1]
rows = []
for block in re.split(r"\n(?=\s*(?:-\w, )?--[\w-]+)", text):
    block = block.strip()
    m = re.match(r"(?:-\w, )?(--[\w-]+)(?: <\w+>)?(.*)", block, re.S)
    if not m or m.group(1) in ("--help", "--version"):
        continue
    rest = " ".join(m.group(2).split())
    env = re.search(r"\[env: (\w+)=", rest)
    default = re.search(r"\[default: ([^\]]*)\]", rest)
    desc = re.sub(r"\s*\[(env|default):[^\]]*\]", "", rest).strip()
    rows.append(f"| `{m.group(1)}` | `{env.group(1) if env else ''}` | "
                f"{'`' + default.group(1) + '`' if default else ''} | {desc} |")
print("| flag | environment | default | meaning |")
print("|---|---|---|---|")
print("\n".join(rows))
