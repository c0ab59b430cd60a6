// What a member of a session can make the relay hold with pipes: pipes
// asked for and not answered count toward each node's limit, and a pipe is
// accepted once. Nodes made by hand (HTTP streaming), as a hostile member
// would write them.

import assert from "node:assert/strict";
import { rawStreamNode, startRelay } from "./_relay.ts";

Deno.test("relay pipes: pipes waiting for an answer count toward each node's 64, for the dialer and the node asked; they count no more once answered", async () => {
  await using relay = startRelay();
  const url = `http://127.0.0.1:${relay.addr.port}`;
  const srv = await rawStreamNode(url, "lab", "srv");
  const eve = await rawStreamNode(url, "lab", "eve");
  const laptop = await rawStreamNode(url, "lab", "laptop");
  try {
    // srv answers none of them (yet): 64 pipes asked for, waiting.
    const waiting = Array.from({ length: 64 }, (_, i) => eve.pipe(`eve-${i}`, "srv"));
    const offered: string[] = [];
    for (let i = 0; i < 64; i++) offered.push((await srv.nextOf("pipe")).id as string);
    const refusal = async (answer: Response) => {
      const body = await answer.json();
      return `${answer.status} ${body.error}: ${body.message}`;
    };
    assert.equal(
      await refusal(await eve.pipe("eve-64", "srv")),
      "503 full: eve has 64 pipes already",
    );
    assert.equal(
      await refusal(await laptop.pipe("laptop-1", "srv")),
      "503 full: srv has 64 pipes already",
      "a node's pipes cannot be filled by dials nobody answered",
    );
    await srv.send(...offered.map((id) => ({ t: "pipe-refuse", id, reason: "not now" })));
    for (const answer of await Promise.all(waiting)) {
      assert.equal(await refusal(answer), "403 pipe-refused: srv refused the pipe: not now");
    }
    // Answered, they count no more: srv is offered the next one.
    const next = laptop.pipe("laptop-2", "srv");
    assert.equal((await srv.nextOf("pipe")).id, "laptop-2");
    await srv.send({ t: "pipe-refuse", id: "laptop-2", reason: "still not" });
    assert.equal(await refusal(await next), "403 pipe-refused: srv refused the pipe: still not");
  } finally {
    await Promise.all([srv.close(), eve.close(), laptop.close()]);
  }
});

Deno.test("relay pipes: a pipe is accepted once; a second accept of its id, at the same time, is refused (its link would have been held open for good)", async () => {
  await using relay = startRelay();
  const url = `http://127.0.0.1:${relay.addr.port}`;
  const eve = await rawStreamNode(url, "lab", "eve");
  const eve2 = await rawStreamNode(url, "lab", "eve2");
  try {
    const dialed = eve.pipe("twice", "eve2");
    assert.equal((await eve2.nextOf("pipe")).id, "twice");
    const accepts = await Promise.all([eve2.pipe("twice"), eve2.pipe("twice")]);
    const dialer = await dialed;
    assert.equal(dialer.status, 200);
    assert.deepEqual(accepts.map((answer) => answer.status).sort(), [200, 404]);
    const refused = accepts.find((answer) => answer.status === 404)!;
    assert.equal((await refused.json()).error, "no-such-stream");
    assert.equal(relay.relay.stats.pipes!.open, 1);
    const linked = [dialer, ...accepts].filter((answer) => answer.status === 200);
    await Promise.all(linked.map((answer) => answer.body?.cancel()));
  } finally {
    await Promise.all([eve.close(), eve2.close()]);
  }
});
