"""The plugin image's SBOM in CycloneDX 1.6 JSON, written and schema-checked by OWASP's cyclonedx-python-lib.

Run by deploy/build-image.sh with its build tools (deploy/image/build-requirements.txt), never inside the image:
    sbom.py generate --rootfs MNT --wheels DIR --name cc-gpu --version V --digest sha256:... --output FILE
    sbom.py validate FILE
Components: every Debian package in the root filesystem's dpkg database (name, version, architecture, source package;
purl pkg:deb/debian/...) and every Python distribution in the image's virtualenv (name, version, licence where the
distribution declares one, and the sha256 of the wheel it was installed from; purl pkg:pypi/...). The timestamp is
SOURCE_DATE_EPOCH and the serial number is derived from the image digest, so the same image gives the same SBOM.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

VENV_SITE = "opt/cc-gpu/lib/python3.11/site-packages"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def debian_packages(rootfs: Path) -> list[Component]:
    fmt = "${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\n"
    out = subprocess.run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", f"-f={fmt}"],
                         capture_output=True, text=True, check=True).stdout
    components = []
    for line in sorted(out.splitlines()):
        name, version, arch, source, source_version = line.split("\t")
        qualifiers = {"arch": arch, "distro": "debian-12"}
        if source != name:
            qualifiers["upstream"] = f"{source}@{source_version}" if source_version != version else source
        purl = PackageURL(type="deb", namespace="debian", name=name, version=version, qualifiers=qualifiers)
        components.append(Component(type=ComponentType.LIBRARY if name.startswith("lib") else ComponentType.APPLICATION,
                                    name=name, version=version, purl=purl, bom_ref=purl.to_string(),
                                    properties=[Property(name="cc-gpu:debian:source", value=source)]))
    return components


def python_distributions(rootfs: Path, wheels: Path) -> list[Component]:
    hashes = {}
    for wheel in wheels.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        hashes[(normalise(name), version)] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    factory = LicenseFactory()
    components = []
    for dist in sorted(metadata.distributions(path=[str(rootfs / VENV_SITE)]), key=lambda d: normalise(d.name)):
        name, version = normalise(dist.name), dist.version
        digest = hashes.get((name, version))
        if digest is None:
            raise SystemExit(f"sbom: no wheel for {name} {version} in {wheels}")
        declared = dist.metadata.get("License-Expression") or ""
        if not declared:
            classifiers = [c.rsplit(" :: ", 1)[1] for c in dist.metadata.get_all("Classifier") or []
                           if c.startswith("License :: ")]
            free = (dist.metadata.get("License") or "").strip()
            declared = free if free and "\n" not in free and len(free) < 80 else " OR ".join(classifiers)
        licenses = [factory.make_from_string(declared)] if declared else []
        purl = PackageURL(type="pypi", name=name, version=version)
        components.append(Component(type=ComponentType.LIBRARY, name=name, version=version, purl=purl,
                                    bom_ref=purl.to_string(), licenses=licenses,
                                    hashes=[HashType(alg=HashAlgorithm.SHA_256, content=digest)]))
    return components


def generate(args: argparse.Namespace) -> None:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    image_purl = PackageURL(type="oci", name=args.name, version=args.digest,
                            qualifiers={"tag": args.version, "arch": "amd64"})
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, image_purl.to_string()))
    bom.metadata.timestamp = datetime.fromtimestamp(epoch, tz=UTC)
    digest = HashType(alg=HashAlgorithm.SHA_256, content=args.digest.removeprefix("sha256:"))
    root = Component(type=ComponentType.CONTAINER, name=args.name, version=args.version, purl=image_purl,
                     bom_ref=image_purl.to_string(), hashes=[digest],
                     properties=[Property(name="org.opencontainers.image.source", value=args.source)])
    bom.metadata.component = root
    components = debian_packages(args.rootfs) + python_distributions(args.rootfs, args.wheels)
    for component in components:
        bom.components.add(component)
    bom.register_dependency(root, components)
    text = JsonV1Dot6(bom).output_as_string(indent=2)
    args.output.write_text(text + "\n")
    print(f"sbom: {args.output.name}: {len(components)} components")


def validate(args: argparse.Namespace) -> None:
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(args.file.read_text())
    if error is not None:
        raise SystemExit(f"sbom: {args.file}: not valid CycloneDX 1.6: {error}")
    print(f"sbom: {args.file.name}: valid CycloneDX 1.6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate")
    gen.add_argument("--rootfs", type=Path, required=True)
    gen.add_argument("--wheels", type=Path, required=True)
    gen.add_argument("--name", required=True)
    gen.add_argument("--version", required=True)
    gen.add_argument("--digest", required=True)
    gen.add_argument("--source", required=True)
    gen.add_argument("--output", type=Path, required=True)
    val = sub.add_parser("validate")
    val.add_argument("file", type=Path)
    args = parser.parse_args()
    {"generate": generate, "validate": validate}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
