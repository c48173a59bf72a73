import { describe, expect, it } from "vitest";
import { fmt, sizeText } from "../src/format.js";
import { clickedText, heatmapHint, overlayHint, unreadable, uploadTooLarge } from "../src/messages.js";

describe("wording", () => {
  it("names an oversized upload and the limit in units people read", () => {
    expect(uploadTooLarge("flag.png", 9.5 * 2 ** 20, 8 * 2 ** 20)).toBe("“flag.png” is 9.5 MB; the limit is 8 MB. Pick a smaller image.");
    expect(sizeText(300)).toBe("300 bytes");
    expect(sizeText(12 * 1024)).toBe("12 KB");
  });

  it("promises a re-run only where a kernel will answer", () => {
    expect(heatmapHint(true)).toContain("re-run");
    expect(heatmapHint(false)).not.toMatch(/re-run|running/);
    expect(overlayHint(false)).toContain("only select");
    expect(clickedText("layer 3", true)).toBe("layer 3 · running…");
    expect(clickedText("layer 3", false)).toBe("layer 3");
  });

  it("reads like a sentence, not like Python", () => {
    for (const text of [uploadTooLarge("a.png", 2e7, 1e7), heatmapHint(false), overlayHint(true), unreadable("heatmap")]) {
      expect(text).toMatch(/^[A-Z“]/);
      expect(text).not.toMatch(/Error:|object at 0x|got '/);
    }
  });

  it("formats numbers", () => {
    expect(fmt(0.12345)).toBe("0.123");
    expect(fmt(Number.NaN)).toBe("–");
    expect(fmt(12345)).toBe("1.23e+4");
  });
});
