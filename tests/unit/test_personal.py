"""Citizens' personal information: parsing, masking, sealing, erasure, and the event log."""

from __future__ import annotations

import base64
import json
from uuid import UUID, uuid4

import pytest

from core.app import CityApp
from core.personal import (
    ERASED_VIEW,
    Contact,
    InMemoryKeyStore,
    InvalidContactError,
    PersonalData,
    mask_address,
    mask_email,
    mask_name,
    mask_phone,
    screen_text,
)
from tests.helpers.desk import FakeClock, make_desk, request

PEPPER = b"0123456789abcdef-pepper"


@pytest.fixture
def personal() -> PersonalData:
    return PersonalData(InMemoryKeyStore(), PEPPER)


# -- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("13812345678", "13812345678"),
        (" 138 1234 5678 ", "13812345678"),
        ("138-1234-5678", "13812345678"),
        ("+86 138 1234 5678", "+8613812345678"),
        ("+86 (10) 6552.9988", "+861065529988"),
        ("(021) 6321-0000", "02163210000"),
        ("12345", "12345"),
        ("1" * 20, "1" * 20),
        ("１３８ １２３４ ５６７８", "13812345678"),  # full-width digits from an IME
        ("＋８６ １３８１２３４５６７８", "+8613812345678"),
    ],
)
def test_phone_normalisation(raw: str, normal: str) -> None:
    assert Contact.parse(phone=raw).phone == normal


@pytest.mark.parametrize(
    "raw", ["1234", "1" * 21, "138abcd5678", "+", "138+1234", "١٢٣٤٥٦", "१२३४५६"]
)
def test_bad_phones_are_refused(raw: str) -> None:
    with pytest.raises(InvalidContactError, match="phone must be 5 to 20 digits"):
        Contact.parse(phone=raw)


def test_blank_fields_become_none() -> None:
    contact = Contact.parse(name="  ", phone=" ", email="", address=None)
    assert contact == Contact()
    assert contact.empty
    assert not Contact.parse(address="x").empty


def test_fields_are_trimmed_and_email_lowercased() -> None:
    contact = Contact.parse(name=" 张三 ", email=" Zhang.San@Example.COM ", address=" 南京路1号 ")
    assert contact == Contact(name="张三", email="zhang.san@example.com", address="南京路1号")
    assert contact.clear() == {
        "name": "张三",
        "phone": None,
        "email": "zhang.san@example.com",
        "address": "南京路1号",
    }


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "a b@c.com", "a@@b.com", "@b.com"])
def test_bad_emails_are_refused(email: str) -> None:
    with pytest.raises(InvalidContactError, match="email is not a valid address"):
        Contact.parse(email=email)


def test_long_fields_are_refused() -> None:
    assert Contact.parse(name="n" * 100).name == "n" * 100
    with pytest.raises(InvalidContactError, match="name is longer than 100"):
        Contact.parse(name="n" * 101)
    assert Contact.parse(address="a" * 300).address == "a" * 300
    with pytest.raises(InvalidContactError, match="address is longer than 300"):
        Contact.parse(address="a" * 301)


# -- masking ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("13812345678", "138****5678"),
        ("+8613812345678", "+86*******5678"),
        ("12345678", "123*5678"),
        ("1234567", "1******"),
        ("12345", "1****"),
        (None, None),
    ],
)
def test_mask_phone(phone: str | None, masked: str | None) -> None:
    assert mask_phone(phone) == masked


@pytest.mark.parametrize(
    ("name", "masked"),
    [("张三", "张*"), ("欧阳娜娜", "欧***"), ("张", "张*"), ("Li Wei", "L*****"), (None, None)],
)
def test_mask_name(name: str | None, masked: str | None) -> None:
    assert mask_name(name) == masked


def test_mask_email_and_address() -> None:
    assert mask_email("zhang.san@example.com") == "z***@example.com"
    assert mask_email(None) is None
    assert mask_address("上海市黄浦区南京东路100号") == "上海市黄****"
    assert mask_address("ab") == "a****"
    assert mask_address(None) is None


def test_masked_contact_hides_what_it_masks() -> None:
    contact = Contact.parse(
        name="王小明", phone="13812345678", email="wxm@example.cn", address="黄浦区中山东一路18号"
    )
    masked = contact.masked()
    assert masked == {
        "name": "王**",
        "phone": "138****5678",
        "email": "w***@example.cn",
        "address": "黄浦区****",
    }
    shown = json.dumps(masked, ensure_ascii=False)
    for secret in ("13812345678", "王小明", "wxm@", "中山东一路"):
        assert secret not in shown
    assert set(ERASED_VIEW) == set(masked)


# -- sealing ----------------------------------------------------------------------------

ZHANG = Contact.parse(name="张三", phone="13812345678", email="zs@example.com", address="南京路1号")


def test_the_pepper_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        PersonalData(InMemoryKeyStore(), b"short")


def test_seal_open_round_trip(personal: PersonalData) -> None:
    citizen, token = personal.seal(ZHANG)
    assert token.startswith("v1.")
    assert personal.open(citizen, token) == ZHANG
    # A fresh nonce each time: the same contact never gives the same token.
    citizen2, token2 = personal.seal(ZHANG)
    assert citizen2 == citizen
    assert token2 != token
    assert personal.open(citizen, token2) == ZHANG


def test_the_token_holds_nothing_in_clear(personal: PersonalData) -> None:
    _, token = personal.seal(ZHANG)
    raw = base64.urlsafe_b64decode(token.removeprefix("v1."))
    secrets = ["13812345678", "5678", "张三", "zs@example.com", "南京路"]
    for secret in secrets:
        assert secret not in token
        assert secret.encode() not in raw
        assert secret.encode("utf-16-le") not in raw
    # Not even the JSON the contact was encrypted from.
    assert b'"phone"' not in raw
    body = json.dumps(ZHANG.clear(), ensure_ascii=False, separators=(",", ":")).encode()
    assert len(raw) == 12 + len(body) + 16  # nonce, ciphertext, tag: nothing else


def test_the_same_phone_finds_the_same_citizen(personal: PersonalData) -> None:
    a, _ = personal.seal(Contact.parse(phone="138 1234 5678", name="张三"))
    b, _ = personal.seal(Contact.parse(phone="13812345678", name="Zhang San"))
    c, _ = personal.seal(Contact.parse(phone="13900000000"))
    d, _ = personal.seal(Contact.parse(phone="13812345678", email="other@example.com"))
    assert a == b == d
    assert c != a
    assert personal.citizen_for(phone="138-1234-5678") == a
    assert personal.citizen_for(phone="13700000000") is None
    assert personal.citizen_for() is None


def test_the_same_email_finds_the_same_citizen_when_there_is_no_phone(
    personal: PersonalData,
) -> None:
    a, _ = personal.seal(Contact.parse(email="Zs@Example.com"))
    b, _ = personal.seal(Contact.parse(email="zs@example.com", name="张三"))
    assert a == b
    assert personal.citizen_for(email="ZS@example.com") == a


def test_without_phone_or_email_each_contact_is_a_new_citizen(personal: PersonalData) -> None:
    a, _ = personal.seal(Contact.parse(name="张三"))
    b, _ = personal.seal(Contact.parse(name="张三"))
    assert a != b


def test_the_lookup_is_a_keyed_hash(personal: PersonalData) -> None:
    lookup = personal.lookup_of(ZHANG)
    assert lookup is not None
    assert "13812345678" not in lookup
    assert len(lookup) == 64
    other = PersonalData(InMemoryKeyStore(), b"another-pepper-of-16+bytes")
    assert other.lookup_of(ZHANG) != lookup
    assert personal.lookup_of(Contact(name="x")) is None


def test_a_token_opens_only_for_its_own_citizen(personal: PersonalData) -> None:
    zhang, token = personal.seal(ZHANG)
    li, _ = personal.seal(Contact.parse(phone="13900000000"))
    assert personal.open(zhang, token) == ZHANG
    assert personal.open(li, token) is None
    assert personal.open(uuid4(), token) is None


def test_a_tampered_token_does_not_open(personal: PersonalData) -> None:
    citizen, token = personal.seal(ZHANG)
    raw = bytearray(base64.urlsafe_b64decode(token.removeprefix("v1.")))
    raw[20] ^= 1
    tampered = "v1." + base64.urlsafe_b64encode(bytes(raw)).decode()
    assert personal.open(citizen, tampered) is None


def test_a_logged_in_citizen_keeps_their_id(personal: PersonalData) -> None:
    known = uuid4()
    citizen, token = personal.seal(ZHANG, known)
    assert citizen == known
    assert personal.open(known, token) == ZHANG
    again, token2 = personal.seal(Contact.parse(name="张三"), known)
    assert again == known
    assert personal.open(known, token2) == Contact(name="张三")
    assert personal.open(known, token) == ZHANG  # the key did not change


def test_erasure(personal: PersonalData) -> None:
    citizen, token = personal.seal(ZHANG)
    other, other_token = personal.seal(Contact.parse(phone="13900000000"))
    assert personal.erase(citizen) is True
    assert personal.open(citizen, token) is None
    assert personal.erase(citizen) is False
    assert personal.citizen_for(phone="13812345678") is None
    assert personal.open(other, other_token) == Contact(phone="13900000000")
    # Coming back with the same phone makes a new citizen; the old id stays erased.
    again, _ = personal.seal(ZHANG)
    assert again != citizen
    assert personal.citizen_for(phone="13812345678") == again
    with pytest.raises(InvalidContactError, match="erased"):
        personal.seal(ZHANG, citizen)


def test_in_memory_key_store() -> None:
    keys = InMemoryKeyStore()
    assert keys.key(uuid4()) is None
    assert keys.erase(uuid4()) is False
    cid, key = keys.find_or_create("lookup")
    assert len(key) == 32
    assert keys.find_or_create("lookup") == (cid, key)
    assert keys.find("lookup") == cid
    assert keys.ensure(cid) == key
    assert keys.erase(cid) is True
    assert keys.find("lookup") is None
    assert keys.ensure(cid) is None


# -- the event log holds no personal data in clear -------------------------------------


def test_stored_events_hold_no_contact_in_clear() -> None:
    app = CityApp()
    desk = make_desk(app, FakeClock())
    contact = Contact.parse(
        name="钱七", phone="137 1234 5678", email="qianqi@example.com", address="福州路88号"
    )
    case = desk.submit(
        request("h-1", channel="hotline", description="road broken", contact=contact),
        actor="operator:7",
        correlation_id="c",
    )
    desk.resolve(case.id, "fixed", actor="dept", reason="", correlation_id="c")
    assert desk.contact_of(desk.get(case.id)) == contact

    records = app.recorder.select_notifications(start=None, limit=1000)
    assert len(records) == 4  # submitted, accepted, assigned, resolved
    secrets = ["13712345678", "1234 5678", "钱七", "qianqi", "福州路"]
    for record in records:
        state = record.state
        for secret in secrets:
            assert secret.encode() not in state, (record.topic, secret)
            # JSON may escape non-ASCII text: look for the escaped form too.
            assert json.dumps(secret).strip('"').encode() not in state, (record.topic, secret)
    submitted = json.loads(records[0].state)
    assert submitted["contact_token"].startswith("v1.")
    token_raw = base64.urlsafe_b64decode(submitted["contact_token"].removeprefix("v1."))
    for secret in secrets:
        assert secret.encode() not in token_raw
    assert UUID(submitted["citizen_id"]) == desk.personal.citizen_for(phone="13712345678")


# -- personal data typed into free text ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "screened", "phones"),
    [
        (
            "我家门口积水，电话13800138000请回电",
            "我家门口积水，电话[手机号已隐去]请回电",
            ("13800138000",),
        ),
        ("call +86 138-0013-8000.", "call [手机号已隐去].", ("+86 138-0013-8000",)),
        ("１３８００１３８０００，全角", "[手机号已隐去]，全角", ("１３８００１３８０００",)),
        ("身份证11010519491231002X丢在路边", "身份证[身份证号已隐去]丢在路边", ()),
        ("mail me: li.si@example.com ok", "mail me: [邮箱已隐去] ok", ()),
    ],
)
def test_personal_data_in_free_text_is_taken_out(
    text: str, screened: str, phones: tuple[str, ...]
) -> None:
    result = screen_text(text)
    assert result.text == screened
    assert result.phones == phones


@pytest.mark.parametrize(
    "text",
    [
        "门牌 1号楼 3单元 120室，井盖缺失",
        "工单 123456789012345678 (18 digits, no valid ID check character)",
        "138001380001 is twelve digits",
        "座机 021-64001234",
        "pothole at Zhaojiabang Rd no. 1380",
    ],
)
def test_other_numbers_are_left_alone(text: str) -> None:
    assert screen_text(text).text == text


def test_a_phone_typed_only_into_the_description_becomes_the_sealed_contact() -> None:
    app = CityApp()
    desk = make_desk(app, FakeClock())
    case = desk.submit(
        request(
            "h-2",
            channel="hotline",
            description="路面塌陷，联系13712345678，身份证11010519491231002X",
            address="福州路88号 a@example.com",
        ),
        actor="operator:7",
        correlation_id="c",
    )
    assert case.description == "路面塌陷，联系[手机号已隐去]，身份证[身份证号已隐去]"
    assert case.address == "福州路88号 [邮箱已隐去]"
    assert desk.contact_of(desk.get(case.id)) == Contact.parse(phone="13712345678")
    desk.resolve(case.id, "fixed", actor="dept", reason="", correlation_id="c")
    desk.rate(case.id, 2, "没修好 打13712345678", actor="citizen", correlation_id="c")
    assert desk.get(case.id).rating_comment == "没修好 打[手机号已隐去]"
    for record in app.recorder.select_notifications(start=None, limit=1000):
        for secret in ("13712345678", "11010519491231002X", "a@example.com"):
            assert secret.encode() not in record.state, (record.topic, secret)
