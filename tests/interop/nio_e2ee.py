"""Two matrix-nio clients (Olm/Megolm through vodozemac) exchange encrypted messages
through an ourwhats homeserver, and each decrypts the other's.

Usage: python nio_e2ee.py BASE_URL STORE_DIR
Exits 0 when both messages were decrypted, 1 otherwise; prints what happened.
Run by tests/e2ee_interop.rs against a real server on loopback.
"""

import asyncio
import os
import sys
import time

from nio import (
    AsyncClient,
    AsyncClientConfig,
    KeysUploadResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
)

PASSWORD = "correct horse battery"
DEADLINE_S = 60


def fail(message):
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


async def new_client(base_url, store_dir, name):
    path = os.path.join(store_dir, name)
    os.makedirs(path, exist_ok=True)
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    client = AsyncClient(base_url, f"@{name}:placeholder", store_path=path, config=config)
    response = await client.register(name, PASSWORD, device_name=f"{name}'s laptop")
    if not isinstance(response, RegisterResponse):
        fail(f"register {name}: {response}")
    # register() logs the client in and loads its Olm account from the store.
    if not client.olm:
        fail(f"{name} has no Olm account after registration")
    return client


async def sync_once(client):
    response = await client.sync(timeout=1000, full_state=False)
    if client.should_upload_keys:
        upload = await client.keys_upload()
        if not isinstance(upload, KeysUploadResponse):
            fail(f"keys upload of {client.user_id}: {upload}")
    if client.should_query_keys:
        await client.keys_query()
    if client.should_claim_keys:
        await client.keys_claim(client.get_users_for_key_claiming())
    return response


async def decrypted_text(client, room_id, wanted):
    """Syncs until `wanted` arrives decrypted in the room's timeline."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        response = await sync_once(client)
        room = response.rooms.join.get(room_id) if hasattr(response, "rooms") else None
        for event in room.timeline.events if room else []:
            if isinstance(event, RoomMessageText) and event.body == wanted:
                if not event.decrypted:
                    fail(f"{client.user_id} got {wanted!r} but not through decryption")
                return event
            if isinstance(event, MegolmEvent):
                print(f"{client.user_id}: could not decrypt {event.event_id} yet", flush=True)
    fail(f"{client.user_id} never decrypted {wanted!r}")


async def send_encrypted(client, room_id, text):
    response = await client.room_send(
        room_id,
        "m.room.message",
        {"msgtype": "m.text", "body": text},
        ignore_unverified_devices=True,
    )
    if not isinstance(response, RoomSendResponse):
        fail(f"send by {client.user_id}: {response}")


async def main(base_url, store_dir):
    alice = await new_client(base_url, store_dir, "alice")
    bob = await new_client(base_url, store_dir, "bob")
    try:
        await sync_once(alice)
        await sync_once(bob)
        created = await alice.room_create(
            name="secret",
            invite=[bob.user_id],
            is_direct=True,
            initial_state=[
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            ],
        )
        if not isinstance(created, RoomCreateResponse):
            fail(f"create room: {created}")
        room_id = created.room_id
        await sync_once(bob)
        joined = await bob.join(room_id)
        if getattr(joined, "room_id", None) != room_id:
            fail(f"bob join: {joined}")
        # Each learns the other's devices (device_lists in /sync, then /keys/query).
        for _ in range(3):
            await sync_once(alice)
            await sync_once(bob)
        if not alice.rooms[room_id].encrypted:
            fail("alice does not see the room as encrypted")

        await send_encrypted(alice, room_id, "hello bob, only you can read this")
        got = await decrypted_text(bob, room_id, "hello bob, only you can read this")
        print(f"bob decrypted: {got.body!r} from {got.sender}", flush=True)

        await send_encrypted(bob, room_id, "hello alice, same here")
        got = await decrypted_text(alice, room_id, "hello alice, same here")
        print(f"alice decrypted: {got.body!r} from {got.sender}", flush=True)
        print("OK", flush=True)
    finally:
        await alice.close()
        await bob.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
