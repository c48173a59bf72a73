import { describe, expect, it } from "vitest";
import { THEME, themeRule } from "../src/style.js";

/** The value a CSS custom property resolves to: `var(--a,fallback)` chains over `defined` (test-only). */
function resolve(value, defined) {
  const match = value.match(/^var\((--[\w-]+),(.*)\)$/);
  if (!match) return value;
  return defined[match[1]] ?? resolve(match[2], defined);
}

/** The --mll-* declarations of themeRule() as {name: value}. */
function declarations() {
  const body = themeRule().match(/^\.mll-root\{(.*)\}$/)[1];
  return Object.fromEntries(body.split(";").map((d) => [d.slice(0, d.indexOf(":")), d.slice(d.indexOf(":") + 1)]));
}

describe("theme colours", () => {
  it("read VS Code's variable, then JupyterLab's, then a light default", () => {
    for (const [vscode, jupyter, light] of Object.values(THEME)) {
      expect(vscode).toMatch(/^--vscode-/);
      expect(jupyter).toMatch(/^--jp-/);
      expect(light).toMatch(/^#[0-9a-f]{6}$/);
    }
    expect(declarations()["--mll-bg"]).toBe("var(--vscode-editor-background,var(--jp-layout-color1,#ffffff))");
    expect(declarations()["--mll-fg"]).toBe("var(--vscode-editor-foreground,var(--jp-ui-font-color1,#1f1f1f))");
  });

  it("follow a dark VS Code page even where ipywidgets set light --jp-* values on :root", () => {
    const page = { "--jp-ui-font-color1": "rgba(0, 0, 0, 0.8)", "--jp-layout-color1": "white", "--vscode-editor-foreground": "#cccccc", "--vscode-editor-background": "#1f1f1f" };
    const css = declarations();
    expect(resolve(css["--mll-fg"], page)).toBe("#cccccc");
    expect(resolve(css["--mll-bg"], page)).toBe("#1f1f1f");
  });

  it("follow JupyterLab's theme where no VS Code variable exists, and fall back to light", () => {
    const css = declarations();
    expect(resolve(css["--mll-fg"], { "--jp-ui-font-color1": "rgba(255, 255, 255, 1)" })).toBe("rgba(255, 255, 255, 1)");
    for (const [name, sources] of Object.entries(THEME)) expect(resolve(css[`--mll-${name}`], {})).toBe(sources[2]);
    expect(css["--mll-visual"]).toBe("#e65100");
  });
});
