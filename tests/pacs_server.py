"""A real Orthanc (Debian's `orthanc` + `orthanc-dicomweb`) for the PACS tests: where it is installed, its
credentials and a REST client; the `orthanc` fixture in conftest.py starts one per module."""

from __future__ import annotations

from pathlib import Path

import httpx

PACS_USER, PACS_PASSWORD = "medsamix", "pacs-password-91ab"
ORTHANC = Path("/usr/sbin/Orthanc")
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL = "apt-get install -y --no-install-recommends orthanc orthanc-dicomweb"


class Orthanc:
    """A running Orthanc: its DICOMweb root and a REST client with its credentials."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.rest = httpx.Client(base_url=self.url, auth=(PACS_USER, PACS_PASSWORD), timeout=30)

    def upload(self, data: bytes) -> None:
        self.rest.post("/instances", content=data).raise_for_status()

    def file(self, sop_instance_uid: str) -> bytes:
        """The stored Part 10 file of an instance, found by its UID through /tools/lookup."""
        found = self.rest.post("/tools/lookup", content=sop_instance_uid).json()
        (orthanc_id,) = [f["ID"] for f in found if f["Type"] == "Instance"]
        return self.rest.get(f"/instances/{orthanc_id}/file").content
