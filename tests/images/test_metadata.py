"""Metadata carried from input to output: EXIF (orientation reset to 1), XMP and the ICC
profile, in JPEG, PNG and WebP, at /upscale and through a job; metadata=strip drops EXIF
and XMP and keeps the ICC profile."""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from PIL import ExifTags, Image, ImageCms

from tests.helpers import make_app, png_bytes, running, set5_crop

XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'


def _camera_jpeg() -> bytes:
    """A phone-like photo: make, model, dates, GPS, turned by EXIF, with XMP and sRGB ICC."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon"
    exif[ExifTags.Base.Model] = "EOS 5D"
    exif[ExifTags.Base.DateTime] = "2024:05:01 10:00:00"
    exif[ExifTags.Base.Orientation] = 6
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2024:05:01 10:00:00"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 24.0)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return png_bytes(set5_crop("bird", (0, 0, 48, 32)), "JPEG", quality=90, exif=exif,
                     xmp=XMP, icc_profile=icc)


def _meta(data: bytes) -> tuple[Image.Image, Image.Exif]:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img, img.getexif()


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_exif_xmp_and_icc_are_carried_and_can_be_stripped(fmt: str) -> None:
    data = _camera_jpeg()

    async def main() -> None:
        async with running(make_app()) as c:
            r = await c.post(f"/upscale?scale=2&format={fmt}", content=data,
                             headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
            img, exif = _meta(r.content)
            assert img.size == (64, 96)  # turned by its EXIF, then upscaled
            assert exif[ExifTags.Base.Make] == "Canon" and exif[ExifTags.Base.Model] == "EOS 5D"
            assert exif[ExifTags.Base.Orientation] == 1  # applied: never turned twice
            assert exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitudeRef] == "N"
            assert exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] == \
                "2024:05:01 10:00:00"
            xmp = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
            assert xmp and "xmpmeta" in (xmp.decode() if isinstance(xmp, bytes) else xmp)
            assert img.info.get("icc_profile")

            r = await c.post(f"/upscale?scale=2&format={fmt}&metadata=strip", content=data,
                             headers={"content-type": "image/jpeg"})
            img, exif = _meta(r.content)
            assert img.size == (64, 96) and len(exif) == 0
            assert not (img.info.get("xmp") or img.info.get("XML:com.adobe.xmp"))
            assert img.info.get("icc_profile")  # colours, not personal data: kept

    asyncio.run(main())


def test_a_job_carries_metadata_too_and_strip_is_kept_with_it() -> None:
    data = _camera_jpeg()

    async def main() -> None:
        async with running(make_app()) as c:
            for query, carried in (("", True), ("&metadata=strip", False)):
                r = await c.post(f"/v1/jobs?scale=2{query}", content=data,
                                 headers={"content-type": "image/jpeg"})
                job = r.json()
                deadline = time.monotonic() + 60
                while job["status"] != "done":
                    assert time.monotonic() < deadline and job["status"] != "failed", job
                    await asyncio.sleep(0.02)
                    job = (await c.get(f"/v1/jobs/{job['id']}")).json()
                _, exif = _meta((await c.get(job["result_url"])).content)
                assert (exif.get(ExifTags.Base.Make) == "Canon") is carried

    asyncio.run(main())


def test_a_bad_metadata_value_is_422() -> None:
    async def main() -> None:
        async with running(make_app()) as c:
            r = await c.post("/upscale?metadata=drop", content=png_bytes(set5_crop()),
                             headers={"content-type": "image/png"})
            assert r.status_code == 422 and "metadata" in r.json()["error"]

    asyncio.run(main())
