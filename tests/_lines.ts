// Splits a text stream into lines (without their line breaks).

/** A `TransformStream` from text chunks to lines; a last line without a break is kept. */
export class TextLineStream extends TransformStream<string, string> {
  constructor() {
    let partial = "";
    super({
      transform(chunk, controller) {
        const lines = (partial + chunk).split(/\r?\n/);
        partial = lines.pop()!;
        for (const line of lines) controller.enqueue(line);
      },
      flush(controller) {
        if (partial !== "") controller.enqueue(partial);
      },
    });
  }
}
