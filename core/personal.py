"""Citizens' personal information (PIPL): sealed per citizen, masked by role, erasable.

Crypto-shredding: a case's events carry the citizen's contact only as ciphertext under
that citizen's own key (AES-GCM), and a pseudonymous citizen id. The keys live outside
the event log, in a ``KeyStore``. Erasing a citizen deletes the key: the events stay
intact and replayable, and the contact then reads as ``[erased]``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import threading
import unicodedata
import uuid
from dataclasses import asdict, dataclass
from typing import Protocol
from uuid import UUID

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.errors import DomainError

ERASED = "[erased]"
_SEALED_PREFIX = "v1."
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{1,63}$")


class InvalidContactError(DomainError):
    """A contact field is malformed."""


@dataclass(frozen=True, slots=True)
class Contact:
    """What a citizen tells us about themselves; every field optional."""

    name: str | None = None
    phone: str | None = None
    email: str | None = None
    address: str | None = None

    @classmethod
    def parse(
        cls,
        name: str | None = None,
        phone: str | None = None,
        email: str | None = None,
        address: str | None = None,
    ) -> Contact:
        """Validate and normalise raw contact fields (blank ones become None)."""
        name = (name or "").strip() or None
        address = (address or "").strip() or None
        email = (email or "").strip().lower() or None
        digits = None
        if phone and phone.strip():
            # Full-width digits (from Chinese input methods) become ASCII: one phone, one key.
            raw = unicodedata.normalize("NFKC", phone).strip()
            digits = ("+" if raw.startswith("+") else "") + re.sub(r"[\s\-().]", "", raw).lstrip(
                "+"
            )
            if not re.fullmatch(r"\+?[0-9]{5,20}", digits):
                raise InvalidContactError("phone must be 5 to 20 digits")
        if email is not None and not _EMAIL.match(email):
            raise InvalidContactError("email is not a valid address")
        if name is not None and len(name) > 100:
            raise InvalidContactError("name is longer than 100 characters")
        if address is not None and len(address) > 300:
            raise InvalidContactError("address is longer than 300 characters")
        return cls(name=name, phone=digits, email=email, address=address)

    @property
    def empty(self) -> bool:
        return not (self.name or self.phone or self.email or self.address)

    def masked(self) -> dict[str, str | None]:
        """The contact as shown to roles that do not need it in full (138****5678)."""
        return {
            "name": mask_name(self.name),
            "phone": mask_phone(self.phone),
            "email": mask_email(self.email),
            "address": mask_address(self.address),
        }

    def clear(self) -> dict[str, str | None]:
        return asdict(self)


ERASED_VIEW: dict[str, str | None] = dict.fromkeys(("name", "phone", "email", "address"), ERASED)


# -- personal data typed into free text --------------------------------------------------

# ``\d`` matches full-width digits too (Chinese input methods type them): 138 and １３８.
# A mainland mobile number, with or without +86 and separators (138 0013 8000).
_TEXT_PHONE = re.compile(
    r"(?<!\d)(?:[+＋]?[8８][6６][\s-]?)?[1１][3-9３-９]\d(?:[\s－-]?\d{4}){2}(?!\d)"
)
# A resident identity card number (GB 11643: 17 digits and a check character).
_TEXT_ID = re.compile(r"(?<![\dA-Za-z])[1-9１-９]\d{16}[\dXx](?![\dA-Za-z])")
_TEXT_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
REDACTED = {"phone": "[手机号已隐去]", "id_number": "[身份证号已隐去]", "email": "[邮箱已隐去]"}


def _id_number(text: str) -> bool:
    """Whether ``text`` has a valid GB 11643 check character (a real ID, not any 18 digits)."""
    total = sum(int(c) * w for c, w in zip(text[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == text[17].upper()


@dataclass(frozen=True, slots=True)
class Screened:
    """Free text with the personal data a citizen typed into it taken out."""

    text: str
    phones: tuple[str, ...] = ()  # as typed, in order: one may become the case's contact
    found: tuple[str, ...] = ()  # kinds taken out: phone, id_number, email


def screen_text(text: str) -> Screened:
    """``text`` with mobile numbers, identity card numbers and e-mail addresses replaced by
    a marker, so that they never enter the log (an erasure could not take them out of it).
    The rest of the text is left exactly as typed."""
    if not any(c.isdigit() or c == "@" for c in text):
        return Screened(text)
    found: list[str] = []
    phones: list[str] = []

    def phone(m: re.Match[str]) -> str:
        phones.append(m.group(0))
        found.append("phone")
        return REDACTED["phone"]

    def id_number(m: re.Match[str]) -> str:
        if not _id_number(m.group(0)):
            return m.group(0)
        found.append("id_number")
        return REDACTED["id_number"]

    def email(m: re.Match[str]) -> str:
        found.append("email")
        return REDACTED["email"]

    out = _TEXT_EMAIL.sub(email, text)
    out = _TEXT_ID.sub(id_number, out)
    out = _TEXT_PHONE.sub(phone, out)
    return Screened(out, tuple(phones), tuple(dict.fromkeys(found)))


def mask_phone(phone: str | None) -> str | None:
    if phone is None:
        return None
    if len(phone) <= 7:
        return phone[:1] + "*" * (len(phone) - 1)
    return phone[:3] + "*" * (len(phone) - 7) + phone[-4:]


def mask_name(name: str | None) -> str | None:
    if name is None:
        return None
    return name[:1] + "*" * max(1, len(name) - 1)


def mask_email(email: str | None) -> str | None:
    if email is None:
        return None
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def mask_address(address: str | None) -> str | None:
    if address is None:
        return None
    keep = max(1, len(address) // 3)
    return address[:keep] + "****"


class KeyStore(Protocol):
    """Where citizens' keys live (outside the event log); an adapter implements it."""

    def find_or_create(self, lookup: str | None) -> tuple[UUID, bytes]:
        """The citizen known by ``lookup`` (a keyed hash), created with a new key if new."""
        ...

    def ensure(self, citizen_id: UUID) -> bytes | None:
        """The key of a known citizen id, created if the id is new; None if erased."""
        ...

    def key(self, citizen_id: UUID) -> bytes | None:
        """The citizen's key, or None once erased (or never known)."""
        ...

    def find(self, lookup: str) -> UUID | None: ...

    def erase(self, citizen_id: UUID) -> bool:
        """Delete the key for good; True if there was one."""
        ...


class InMemoryKeyStore:
    """Key store for unit tests and the in-memory event store."""

    def __init__(self) -> None:
        self.keys: dict[UUID, bytes | None] = {}
        self.lookups: dict[str, UUID] = {}
        self.lock = threading.Lock()

    def find_or_create(self, lookup: str | None) -> tuple[UUID, bytes]:
        with self.lock:
            if lookup is not None and lookup in self.lookups:
                cid = self.lookups[lookup]
                key = self.keys.get(cid)
                if key is not None:
                    return cid, key
            cid = uuid.uuid4()
            key = AESGCM.generate_key(bit_length=256)
            self.keys[cid] = key
            if lookup is not None:
                self.lookups[lookup] = cid
            return cid, key

    def ensure(self, citizen_id: UUID) -> bytes | None:
        with self.lock:
            if citizen_id not in self.keys:
                self.keys[citizen_id] = AESGCM.generate_key(bit_length=256)
            return self.keys[citizen_id]

    def key(self, citizen_id: UUID) -> bytes | None:
        return self.keys.get(citizen_id)

    def find(self, lookup: str) -> UUID | None:
        cid = self.lookups.get(lookup)
        return cid if cid is not None and self.keys.get(cid) is not None else None

    def erase(self, citizen_id: UUID) -> bool:
        with self.lock:
            had = self.keys.get(citizen_id) is not None
            self.keys[citizen_id] = None
            for lookup in [k for k, v in self.lookups.items() if v == citizen_id]:
                del self.lookups[lookup]
            return had


class PersonalData:
    """Seals contacts under per-citizen keys; finds citizens by a keyed hash of phone/email."""

    def __init__(self, keys: KeyStore, pepper: bytes) -> None:
        if len(pepper) < 16:
            raise ValueError("the personal-data pepper must be at least 16 bytes")
        self.keys = keys
        self.pepper = pepper

    def lookup_of(self, contact: Contact) -> str | None:
        """A keyed hash of the phone (else the email): finds a citizen without storing it."""
        ident = contact.phone or contact.email
        if ident is None:
            return None
        return hmac.new(self.pepper, ident.encode(), hashlib.sha256).hexdigest()

    def citizen_for(self, phone: str | None = None, email: str | None = None) -> UUID | None:
        lookup = self.lookup_of(Contact.parse(phone=phone, email=email))
        return None if lookup is None else self.keys.find(lookup)

    def seal(self, contact: Contact, citizen_id: UUID | None = None) -> tuple[UUID, str]:
        """Encrypt ``contact`` for its citizen (found, given, or new): (citizen id, token)."""
        if citizen_id is None:
            citizen_id, key = self.keys.find_or_create(self.lookup_of(contact))
        else:
            found = self.keys.ensure(citizen_id)
            if found is None:
                raise InvalidContactError("this citizen's personal data has been erased")
            key = found
        nonce = os.urandom(12)
        body = orjson.dumps(asdict(contact))
        sealed = AESGCM(key).encrypt(nonce, body, citizen_id.bytes)
        return citizen_id, _SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, citizen_id: UUID, token: str) -> Contact | None:
        """The contact, or None if the citizen's key was erased."""
        key = self.keys.key(citizen_id)
        if key is None:
            return None
        raw = base64.urlsafe_b64decode(token.removeprefix(_SEALED_PREFIX))
        try:
            body = AESGCM(key).decrypt(raw[:12], raw[12:], citizen_id.bytes)
        except InvalidTag:
            return None
        return Contact(**orjson.loads(body))

    def erase(self, citizen_id: UUID) -> bool:
        return self.keys.erase(citizen_id)
