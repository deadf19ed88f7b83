// A chat story through matrix-js-sdk (the library Element Web is built on), against a
// real ourwhats: two users log in, one creates a named room and invites the other, who
// joins; messages, an edit, typing, a read receipt and the unread count, a display name
// change, paging back to the room's creation, and a leave, each seen by the other client
// through its own /sync loop. Prints "OK" at the end; any failure exits non-zero.
//
// Usage: node jssdk_chat.mjs BASE_URL SDK_DIR   (SDK_DIR: made by setup_jssdk.sh)

import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [base, sdkDir] = process.argv.slice(2);
if (!base || !sdkDir) {
  console.error("usage: node jssdk_chat.mjs BASE_URL SDK_DIR");
  process.exit(2);
}
const sdk = await import(
  pathToFileURL(join(sdkDir, "node_modules/matrix-js-sdk/lib/index.js")).href
);
const { createClient, ClientEvent, RoomEvent, RoomMemberEvent, EventType } = sdk;
const { logger } = await import(
  pathToFileURL(join(sdkDir, "node_modules/matrix-js-sdk/lib/logger.js")).href
);
logger.setLevel("warn");

const PASSWORD = "js-sdk story password";

function fail(message) {
  console.error(`FAILED: ${message}`);
  process.exit(1);
}

/** Resolves when `check()` is true, looking each time `emitter` (a client) emits `event`
 * and after each of its syncs. */
function until(what, emitter, event, check, ms = 15000) {
  return new Promise((resolve) => {
    const look = () => {
      let done = false;
      try {
        done = check();
      } catch {
        done = false;
      }
      if (done) {
        emitter.off(event, look);
        emitter.off(ClientEvent.Sync, look);
        clearTimeout(timer);
        resolve();
      }
    };
    const timer = setTimeout(() => fail(`timed out waiting for ${what}`), ms);
    emitter.on(event, look);
    emitter.on(ClientEvent.Sync, look);
    look();
  });
}

/** Registers `username` (dummy auth stage) and logs in with the SDK; a started client. */
async function signIn(username) {
  const anonymous = createClient({ baseUrl: base });
  const body = { username, password: PASSWORD, inhibit_login: true };
  try {
    await anonymous.registerRequest(body);
  } catch (e) {
    if (!e.data?.session) fail(`register ${username}: ${e}`);
    await anonymous.registerRequest({
      ...body,
      auth: { type: "m.login.dummy", session: e.data.session },
    });
  }
  const login = await anonymous.loginRequest({
    type: "m.login.password",
    identifier: { type: "m.id.user", user: username },
    password: PASSWORD,
  });
  const client = createClient({
    baseUrl: base,
    userId: login.user_id,
    accessToken: login.access_token,
    deviceId: login.device_id,
  });
  const prepared = new Promise((resolve) =>
    client.on(ClientEvent.Sync, (state) => state === "PREPARED" && resolve()),
  );
  await client.startClient({ initialSyncLimit: 20 });
  await prepared;
  return client;
}

const stamp = Date.now().toString(36);
const alice = await signIn(`jsalice${stamp}`);
const bob = await signIn(`jsbob${stamp}`);
console.log(`signed in: ${alice.getUserId()} and ${bob.getUserId()}`);

// alice creates a named room and invites bob; bob's client sees the invite and joins.
const { room_id: roomId } = await alice.createRoom({
  preset: "private_chat",
  name: "js-sdk room",
  invite: [bob.getUserId()],
});
await until("bob's invite", bob, RoomMemberEvent.Membership, () =>
  bob.getRoom(roomId)?.getMyMembership() === "invite",
);
await bob.joinRoom(roomId);
await until("bob joined on alice's side", alice, RoomMemberEvent.Membership, () =>
  alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join",
);
await until("the room's name on bob's side", bob, RoomEvent.Name, () =>
  bob.getRoom(roomId)?.name === "js-sdk room",
);
console.log(`bob joined ${roomId}`);

// Messages both ways, each arriving through the other's sync loop.
const bodies = (client) =>
  client
    .getRoom(roomId)
    .getLiveTimeline()
    .getEvents()
    .filter((e) => e.getType() === EventType.RoomMessage)
    .map((e) => e.getContent().body);
const { event_id: helloId } = await alice.sendTextMessage(roomId, "hello from alice");
await until("alice's message at bob", bob, RoomEvent.Timeline, () =>
  bodies(bob).includes("hello from alice"),
);
await bob.sendTextMessage(roomId, "hello back from bob");
await until("bob's message at alice", alice, RoomEvent.Timeline, () =>
  bodies(alice).includes("hello back from bob"),
);

// An edit: bob's client shows the replacement content.
await alice.sendEvent(roomId, EventType.RoomMessage, {
  msgtype: "m.text",
  body: "* hello, edited",
  "m.new_content": { msgtype: "m.text", body: "hello, edited" },
  "m.relates_to": { rel_type: "m.replace", event_id: helloId },
});
await until("the edit at bob", bob, RoomEvent.Timeline, () =>
  bob.getRoom(roomId).findEventById(helloId)?.getContent().body === "hello, edited",
);

// Unread count: the server counts alice's messages for bob until bob's read receipt.
const { event_id: badgeId } = await alice.sendTextMessage(roomId, "one more for the badge");
await until("alice's last message and a notification count at bob", bob, RoomEvent.Timeline, () =>
  bob.getRoom(roomId).findEventById(badgeId) !== undefined &&
  bob.getRoom(roomId).getUnreadNotificationCount("total") > 0,
);
const last = bob.getRoom(roomId).findEventById(badgeId);
await bob.sendReadReceipt(last);
await until("bob's receipt at alice", alice, RoomEvent.Receipt, () =>
  alice.getRoom(roomId).getUsersReadUpTo(last).includes(bob.getUserId()),
);
await until("bob's badge cleared", bob, ClientEvent.Sync, () =>
  bob.getRoom(roomId).getUnreadNotificationCount("total") === 0,
);
console.log("unread count and receipt round trip");

// Typing, and a display name change, seen on the other side.
await alice.sendTyping(roomId, true, 10000);
await until("alice typing at bob", bob, RoomMemberEvent.Typing, () =>
  bob.getRoom(roomId).getMember(alice.getUserId())?.typing === true,
);
await bob.setDisplayName("Bob from js");
await until("bob's new name at alice", alice, RoomMemberEvent.Name, () =>
  alice.getRoom(roomId).getMember(bob.getUserId())?.name === "Bob from js",
);

// Paging back: after 30 more messages a fresh client of alice's pages to the creation.
for (let n = 0; n < 30; n++) {
  await bob.sendTextMessage(roomId, `filler ${n}`);
}
const reader = createClient({
  baseUrl: base,
  userId: alice.getUserId(),
  accessToken: alice.getAccessToken(),
  deviceId: alice.getDeviceId(),
});
const readerReady = new Promise((resolve) =>
  reader.on(ClientEvent.Sync, (state) => state === "PREPARED" && resolve()),
);
await reader.startClient({ initialSyncLimit: 5 });
await readerReady;
const room = reader.getRoom(roomId);
for (let i = 0; i < 10 && room.oldState.paginationToken !== null; i++) {
  await reader.scrollback(room, 20);
}
const types = room.getLiveTimeline().getEvents().map((e) => e.getType());
if (types[0] !== EventType.RoomCreate) fail(`paging back ended at ${types[0]}`);
const fillers = bodies(reader).filter((b) => b?.startsWith("filler")).length;
if (fillers !== 30) fail(`paged back over ${fillers} of 30 fillers`);
reader.stopClient();
console.log(`paged back over ${types.length} events to the room's creation`);

// bob leaves; alice's client sees it.
await bob.leave(roomId);
await until("bob's leave at alice", alice, RoomMemberEvent.Membership, () =>
  alice.getRoom(roomId).getMember(bob.getUserId())?.membership === "leave",
);

alice.stopClient();
bob.stopClient();
console.log("OK");
process.exit(0);

