"""Friendly default names for WebAuthn credentials, keyed by the authenticator's AAGUID.

A newly registered credential reports the AAGUID of its authenticator model. We use it only to pick a
readable default name ("YubiKey 5 NFC", "iCloud Keychain", ...) that the user can change later; it is
never used for any security decision.

The table is kept in the repository on purpose (no network fetch at runtime) and covers common
security keys, platform authenticators and password managers. Every entry was checked against public
sources: the community passkey-authenticator-aaguids list (passkeydeveloper), which also carries the
FIDO Metadata Service (MDS) names of hardware keys, and Yubico's published table of YubiKey hardware
FIDO2 AAGUIDs. Where one AAGUID covers several form factors (e.g. the YubiKey 5 NFC and 5C NFC share
theirs), the name is the series name. Enterprise-profile, FIPS-firmware and re-issued AAGUIDs of the
same product map to the same short name.
"""

from __future__ import annotations

import string

ZERO_AAGUID = "00000000-0000-0000-0000-000000000000"

_HEX_DIGITS = frozenset(string.hexdigits)

KNOWN_AUTHENTICATORS: dict[str, str] = {
    # --- Yubico: YubiKey 5 Series (USB-A/USB-C, including Nano) ---------------------------------
    "cb69481e-8ff7-4039-93ec-0a2729a154a8": "YubiKey 5",  # firmware 5.1
    "ee882879-721c-4913-9775-3dfcce97072a": "YubiKey 5",  # firmware 5.2 / 5.4
    "19083c3d-8383-4b18-bc03-8f1c9ab2fd1b": "YubiKey 5",  # firmware 5.7
    "ff4dac45-ede8-4ec2-aced-cf66103f4335": "YubiKey 5",  # firmware 5.7
    "20ac7a17-c814-4833-93fe-539f0d5e3389": "YubiKey 5",  # firmware 5.7, enterprise profile
    "4599062e-6926-4fe7-9566-9e8fb1aedaa0": "YubiKey 5",  # firmware 5.7, enterprise profile
    # --- Yubico: YubiKey 5 Series with NFC (5 NFC, 5C NFC) -----------------------------------------
    "fa2b99dc-9e39-4257-8f92-4a30d23c4118": "YubiKey 5 NFC",  # firmware 5.1
    "2fc0579f-8113-47ea-b116-bb5a8db9202a": "YubiKey 5 NFC",  # firmware 5.2 / 5.4
    "a25342c0-3cdc-4414-8e46-f4807fca511c": "YubiKey 5 NFC",  # firmware 5.7
    "d7781e5d-e353-46aa-afe2-3ca49f13332a": "YubiKey 5 NFC",  # firmware 5.7
    "1ac71f64-468d-4fe0-bef1-0e5f2f551f18": "YubiKey 5 NFC",  # firmware 5.7, enterprise profile
    "6ab56fad-881f-4a43-acb2-0be065924522": "YubiKey 5 NFC",  # firmware 5.7, enterprise profile
    "662ef48a-95e2-4aaa-a6c1-5b9c40375824": "YubiKey 5 NFC Enhanced PIN",
    # --- Yubico: YubiKey 5Ci (Lightning) -----------------------------------------------------------
    "c5ef55ff-ad9a-4b9f-b580-adebafe026d0": "YubiKey 5Ci",  # firmware 5.2 / 5.4
    "a02167b9-ae71-4ac7-9a07-06432ebb6f1c": "YubiKey 5Ci",  # firmware 5.7
    "24673149-6c86-42e7-98d9-433fb5b73296": "YubiKey 5Ci",  # firmware 5.7
    "b90e7dc1-316e-4fee-a25a-56a666a670fe": "YubiKey 5Ci",  # firmware 5.7, enterprise profile
    "3b24bf49-1d45-4484-a917-13175df0867b": "YubiKey 5Ci",  # firmware 5.7, enterprise profile
    # --- Yubico: YubiKey 5 FIPS Series ---------------------------------------------------------------
    "73bb0cd4-e502-49b8-9c6f-b59445bf720b": "YubiKey 5 FIPS",  # firmware 5.4
    "57f7de54-c807-4eab-b1c6-1c9be7984e92": "YubiKey 5 FIPS",  # firmware 5.7
    "905b4cb4-ed6f-4da9-92fc-45e0d4e9b5c7": "YubiKey 5 FIPS",  # firmware 5.7, enterprise profile
    "c1f9a0bc-1dd2-404a-b27f-8e29047a43fd": "YubiKey 5 NFC FIPS",  # firmware 5.4 (also the 5 NFC CSPN)
    "fcc0118f-cd45-435b-8da1-9782b2da0715": "YubiKey 5 NFC FIPS",  # firmware 5.7
    "79f3c8ba-9e35-484b-8f47-53a5a0f5c630": "YubiKey 5 NFC FIPS",  # firmware 5.7, enterprise profile
    "85203421-48f9-4355-9bc8-8a53846e5083": "YubiKey 5Ci FIPS",  # firmware 5.4
    "7b96457d-e3cd-432b-9ceb-c9fdd7ef7432": "YubiKey 5Ci FIPS",  # firmware 5.7
    "3a662962-c6d4-4023-bebb-98ae92e78e20": "YubiKey 5Ci FIPS",  # firmware 5.7, enterprise profile
    # --- Yubico: YubiKey Bio Series ------------------------------------------------------------------
    "d8522d9f-575b-4866-88a9-ba99fa02f35b": "YubiKey Bio",  # FIDO Edition, firmware 5.5 / 5.6
    "83c47309-aabb-4108-8470-8be838b573cb": "YubiKey Bio",  # FIDO Edition, firmware 5.6
    "dd86a2da-86a0-4cbe-b462-4bd31f57bc6f": "YubiKey Bio",  # FIDO Edition, firmware 5.7
    "7409272d-1ff9-4e10-9fc9-ac0019c124fd": "YubiKey Bio",  # FIDO Edition, firmware 5.7
    "8c39ee86-7f9a-4a95-9ba3-f6b097e5c2ee": "YubiKey Bio",  # FIDO Edition, enterprise profile
    "ad08c78a-4e41-49b9-86a2-ac15b06899e2": "YubiKey Bio",  # FIDO Edition, enterprise profile
    "7d1351a6-e097-4852-b8bf-c9ac5c9ce4a3": "YubiKey Bio Multi-protocol",  # firmware 5.6
    "90636e1f-ef82-43bf-bdcf-5255f139d12f": "YubiKey Bio Multi-protocol",  # firmware 5.7
    "34744913-4f57-4e6e-a527-e9ec3c4b94e6": "YubiKey Bio Multi-protocol",  # firmware 5.7
    "97e6a830-c952-4740-95fc-7c78dc97ce47": "YubiKey Bio Multi-protocol",  # enterprise profile
    "6ec5cff2-a0f9-4169-945b-f33b563f7b99": "YubiKey Bio Multi-protocol",  # enterprise profile
    # --- Yubico: Security Key Series -----------------------------------------------------------------
    "f8a011f3-8c0a-4d15-8006-17111f9edc7d": "Security Key by Yubico",  # firmware 5.1
    "b92c3f9a-c014-4056-887f-140a2501163b": "Security Key by Yubico",  # firmware 5.2 / 5.4
    "6d44ba9b-f6ec-2e49-b930-0c8fe920cb73": "Security Key NFC",  # firmware 5.1
    "149a2021-8ef6-4133-96b8-81f8d5b7f1f5": "Security Key NFC",  # firmware 5.2 / 5.4
    "a4e9fc6d-4cbe-4758-b8ba-37598bb5bbaa": "Security Key NFC",  # firmware 5.4
    "e77e3c64-05e3-428b-8824-0cbeb04b829d": "Security Key NFC",  # firmware 5.7
    "b7d3f68e-88a6-471e-9ecf-2df26d041ede": "Security Key NFC",  # firmware 5.7
    "0bb43545-fd2c-4185-87dd-feb0b2916ace": "Security Key NFC Enterprise Edition",  # firmware 5.4
    "47ab2fb4-66ac-4184-9ae1-86be814012d5": "Security Key NFC Enterprise Edition",  # firmware 5.7
    "ed042a3a-4b22-4455-bb69-a267b652ae7e": "Security Key NFC Enterprise Edition",  # firmware 5.7
    "9ff4cc65-6154-4fff-ba09-9e2af7882ad2": "Security Key NFC Enterprise Edition",  # enterprise profile
    "72c6b72d-8512-4c66-8359-9d3d10d9222f": "Security Key NFC Enterprise Edition",  # enterprise profile
    # --- Other security keys -------------------------------------------------------------------------
    "42b4fb4a-2866-43b2-9bf7-6c6669c2e5d3": "Google Titan Security Key",  # v2
    "833b721a-ff5f-4d00-bb2e-bdda3ec01e29": "Feitian ePass FIDO2",
    "ee041bce-25e5-4cdb-8f86-897fd6418464": "Feitian ePass FIDO2-NFC",
    "260e3021-482d-442d-838c-7edfbe153b7e": "Feitian ePass FIDO2-NFC Plus",
    "77010bd7-212a-4fc9-b236-d2ca5e9d4084": "Feitian BioPass FIDO2",
    "12ded745-4bed-47d4-abaa-e713f51d6393": "Feitian AllinOne FIDO2",
    "3e22415d-7fdf-4ea4-8a0c-dd60c4249b9d": "Feitian iePass FIDO",
    "8876631b-d4a0-427f-5773-0ec71c9e0279": "SoloKeys Solo",
    "8976631b-d4a0-427f-5773-0ec71c9e0279": "SoloKeys Solo Tap",
    "2cd2f727-f6ca-44da-8f48-5c2e5da000a2": "Nitrokey 3",  # Nitrokey 3 AM
    # --- Platform authenticators ---------------------------------------------------------------------
    "08987058-cadc-4b81-b6e1-30de50dcbe96": "Windows Hello",
    "9ddd1817-af5a-4672-a2b9-3e3dd95000a9": "Windows Hello",
    "6028b017-b1d4-4c02-b4b3-afcdafc96bb2": "Windows Hello",
    "fbfc3007-154e-4ecc-8c0b-6e020557d7bd": "iCloud Keychain",  # listed today as "Apple Passwords"
    "dd4ec289-e01d-41c9-bb89-70fa845d4bf2": "iCloud Keychain (Managed)",
    "adce0002-35bc-c60a-648b-0b25f1f05503": "Chrome on Mac",
    "771b48fd-d3d4-4f74-9232-fc157ab0507a": "Edge on Mac",
    # --- Password managers ---------------------------------------------------------------------------
    "ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4": "Google Password Manager",
    "d3452668-01fd-4c12-926c-83a4204853aa": "Microsoft Password Manager",
    "53414d53-554e-4700-0000-000000000000": "Samsung Pass",
    "bada5566-a7aa-401f-bd96-45619a55120d": "1Password",
    "d548826e-79b4-db40-a3d8-11116f7e8349": "Bitwarden",
    "531126d6-e717-415c-9320-3d9aa6981239": "Dashlane",
    "b84e4048-15dc-4dd0-8640-f4f60813c8af": "NordPass",
    "0ea242b4-43c4-4a1b-8b17-dd6d0b6baec6": "Keeper",
    "50726f74-6f6e-5061-7373-50726f746f6e": "Proton Pass",
    "f3809540-7f14-49c1-a8b3-8f813b225541": "Enpass",
    "fdb141b2-5d84-443e-8a35-4698c205a502": "KeePassXC",
}


def _canonical(aaguid: str) -> str | None:
    """The lower-case, dashed form of an AAGUID given with or without dashes; None when malformed."""
    digits = aaguid.strip().replace("-", "").lower()
    if len(digits) != 32 or not _HEX_DIGITS.issuperset(digits):
        return None
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def authenticator_name(aaguid: str | None, *, fallback: str) -> str:
    """The friendly name for a model, or ``fallback`` (e.g. "Security key") when unknown or all zeros."""
    if not aaguid:
        return fallback
    canonical = _canonical(aaguid)
    if canonical is None or canonical == ZERO_AAGUID:
        return fallback
    return KNOWN_AUTHENTICATORS.get(canonical, fallback)
