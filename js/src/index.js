// anywidget entry point: one bundle for every widget, chosen by the model's `_widget` trait.
// The same functions render the static HTML export (see mllm_lens/export.py), which finds
// them on globalThis because an inline page script cannot import from this module.
import { renderExplorer } from "./explorer.js";
import { renderHeatmap } from "./heatmap.js";
import { renderOverlay } from "./overlay.js";

function render({ model, el }) {
  const kind = model.get("_widget");
  if (kind === "heatmap") return renderHeatmap({ model, el });
  if (kind === "overlay") return renderOverlay({ model, el });
  if (kind === "explorer") return renderExplorer({ model, el });
  el.textContent = `mllm_lens: unknown widget kind ${JSON.stringify(kind)}`;
  return undefined;
}

/** A read-only stand-in for an anywidget model, built from plain state (static pages). */
export function staticModel(state) {
  const data = { ...state };
  const listeners = {};
  return {
    get: (name) => data[name],
    set: (name, value) => {
      data[name] = value;
      for (const cb of listeners[`change:${name}`] ?? []) cb();
    },
    save_changes: () => {},
    send: () => {},
    on: (event, cb) => {
      listeners[event] ??= [];
      listeners[event].push(cb);
    },
    off: (event, cb) => {
      listeners[event] = (listeners[event] ?? []).filter((f) => f !== cb);
    },
  };
}

globalThis.mllmLensWidgets = { render, staticModel };

export default { render };
