"""Write the Requires-Dist entries of a wheel that apply to this interpreter.

Markers are evaluated for the running Python and platform with no extras selected; the
markers themselves are dropped from the output, one requirement per line, so the result can
be passed to `pip install -r`. Used by scripts/setup-engines.sh to install the dependencies
of a wheel that was installed with --no-deps.

usage: python wheel_requires.py WHEEL [-o FILE] [--exclude NAME]...
"""

import argparse
import sys
import zipfile
from email.parser import HeaderParser

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a fresh venv has only pip's vendored copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name


def wheel_metadata(path):
    with zipfile.ZipFile(path) as wheel:
        names = [
            n
            for n in wheel.namelist()
            if n.count("/") == 1 and n.split("/")[0].endswith(".dist-info") and n.endswith("/METADATA")
        ]
        if len(names) != 1:
            raise SystemExit(f"{path}: expected one .dist-info/METADATA, found {len(names)}")
        return HeaderParser().parsestr(wheel.read(names[0]).decode("utf-8"))


def applicable_requirements(metadata, exclude):
    skip = {canonicalize_name(n) for n in exclude}
    for line in metadata.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if canonicalize_name(req.name) in skip:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        yield str(req)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel")
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    parser.add_argument("--exclude", action="append", default=[], metavar="NAME",
                        help="leave out this distribution (repeatable)")
    args = parser.parse_args(argv)

    seen = set()
    lines = []
    for req in applicable_requirements(wheel_metadata(args.wheel), args.exclude):
        if req not in seen:
            seen.add(req)
            lines.append(req)
    text = "".join(f"{r}\n" for r in lines)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
