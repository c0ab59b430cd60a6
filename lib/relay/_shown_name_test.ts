import assert from "node:assert/strict";
import { shownName } from "./_shown_name.ts";

Deno.test("shownName: plain names as they are; one that could read as log text of its own, quoted", () => {
  for (const plain of ["max", "max(1)", "lab-ssh", "tunnel-client", "zoë", "a17", "n.b@x+y"]) {
    assert.equal(shownName(plain), plain);
  }
  assert.equal(shownName("ops as peer; Node admin left"), '"ops as peer; Node admin left"');
  assert.equal(shownName("a17&&32"), '"a17&&32"');
  assert.equal(shownName("{x}"), '"{x}"');
  assert.equal(shownName('say "hi"'), '"say \\"hi\\""');
});
