// Explorer control panel: pick an example or upload an image, type a question, mark constraint
// tokens, run a trace, and edit / undo. Every change is a request to the kernel, which answers
// by setting the model's traits; this view only renders them (the heatmap and the patch
// overlay are separate widgets below it).
import { asBytes } from "./codec.js";
import { fmt } from "./format.js";
import { uploadTooLarge } from "./messages.js";
import { markRange, spanAt, spanText, toggleToken } from "./spans.js";
import { errorBox, h, injectStyle } from "./style.js";

const KINDS = ["visual", "textual"];
// where each control's errors are shown (the kernel names the control in `error_field`)
const FIELDS = ["upload", "question", "marks", "run", "edit"];

export function renderExplorer({ model, el }) {
  injectStyle(el);
  const send = (content, buffers) => model.send(content, undefined, buffers);
  let mode = "visual";
  let anchor = null; // last clicked chip, for Shift+click ranges
  let chips = [];
  let previewUrl = null;

  const status = h("span", { class: "mll-muted", "data-testid": "status", "aria-live": "polite" });
  const source = h("span", { class: "mll-muted", "data-testid": "source" });
  const error = errorBox("error"); // errors of no single control (a malformed request)
  const errors = Object.fromEntries(FIELDS.map((field) => [field, errorBox(`${field}-error`)]));
  const examples = h("select", { "data-testid": "example-select", "aria-label": "example" });
  examples.addEventListener("change", () => send({ type: "select", index: Number(examples.value) }));
  const file = h("input", { type: "file", accept: "image/*", "data-testid": "upload-input", "aria-label": "upload an image" });
  file.addEventListener("change", upload);
  const preview = h("img", { class: "mll-preview", "data-testid": "preview", alt: "the question's image" });
  const question = h("input", { type: "text", class: "mll-question", "data-testid": "question-input", "aria-label": "question" });
  question.addEventListener("change", () => send({ type: "question", text: question.value }));
  question.addEventListener("keydown", (event) => event.stopPropagation()); // typing must not fire notebook shortcuts
  const modes = KINDS.map((kind) =>
    h("button", { "data-testid": `mode-${kind}`, class: `mll-mode mll-chip-${kind}`, onclick: () => setMode(kind) }, kind),
  );
  const clear = h("button", { "data-testid": "clear-marks", onclick: () => send({ type: "marks", spans: [] }) }, "Clear");
  const chipRow = h("div", { class: "mll-chips", "data-testid": "tokens", role: "group", "aria-label": "question tokens: click, Enter or Space marks a constraint" });
  const constraints = h("div", { class: "mll-muted", "data-testid": "constraints" });
  const corruption = h("select", { "data-testid": "corruption-select", "aria-label": "corruption" });
  corruption.addEventListener("change", () => send({ type: "corruption", value: corruption.value }));
  const run = h("button", { "data-testid": "run", onclick: () => send({ type: "run" }) }, "Run");
  const answer = h("div", { class: "mll-result", "data-testid": "answer", "aria-live": "polite" });
  const notes = h("div", { class: "mll-muted", "data-testid": "notes" });
  const editAnswer = h("input", { type: "text", "data-testid": "edit-answer", "aria-label": "new answer", placeholder: "new answer" });
  const editLayer = h("select", { "data-testid": "edit-layer", "aria-label": "edited layer" });
  const keyToken = h("span", { class: "mll-muted" });
  const apply = h("button", { "data-testid": "edit-apply", onclick: applyEdit }, "Apply edit");
  editAnswer.addEventListener("keydown", (event) => {
    if (event.key === "Enter") applyEdit();
    event.stopPropagation(); // typing here must not trigger notebook shortcuts
  });
  const undo = h("button", { "data-testid": "edit-undo", onclick: () => send({ type: "undo" }) }, "Undo edit");
  const active = h("div", { "data-testid": "edit-active" });
  const editPanel = h(
    "div",
    { class: "mll-panel", "data-testid": "edit-panel", hidden: true },
    h("div", { class: "mll-controls" }, h("label", {}, "new answer ", editAnswer), h("label", {}, "MLP layer ", editLayer), keyToken, apply, undo),
    active,
    errors.edit,
  );
  const editToggle = h("button", { "data-testid": "edit-toggle", "aria-expanded": "false", onclick: toggleEdit }, "Edit the model…");

  const root = h(
    "div",
    { class: "mll-root", "data-testid": "explorer", "data-lm-suppress-shortcuts": "true" },
    h("div", { class: "mll-head" }, h("span", { class: "mll-title", text: "Explorer" }), source, status),
    error,
    h(
      "div",
      { class: "mll-body" },
      preview,
      h(
        "div",
        { class: "mll-side mll-grow" },
        h("div", { class: "mll-controls" }, h("label", {}, "example ", examples), h("label", {}, "or upload an image ", file)),
        errors.upload,
        h("label", { class: "mll-controls" }, "question ", question),
        errors.question,
        h("div", { class: "mll-controls" }, h("span", { class: "mll-muted", text: "mark constraints:" }), ...modes, clear),
        chipRow,
        constraints,
        errors.marks,
        h("div", { class: "mll-controls" }, h("label", {}, "corrupt ", corruption), run, editToggle),
        errors.run,
      ),
    ),
    answer,
    notes,
    editPanel,
  );
  el.replaceChildren(root);
  root.mllSend = send; // for tests and scripted use: what the page would send

  function setMode(kind) {
    mode = kind;
    for (const [i, button] of modes.entries()) button.setAttribute("aria-pressed", String(KINDS[i] === kind));
  }

  function setEditOpen(open) {
    editPanel.hidden = !open;
    editToggle.setAttribute("aria-expanded", String(open));
  }

  function toggleEdit() {
    setEditOpen(editPanel.hidden);
    if (!editPanel.hidden) editAnswer.focus();
  }

  function applyEdit() {
    send({ type: "edit", answer: editAnswer.value, layer: Number(editLayer.value) });
  }

  async function upload() {
    const picked = file.files?.[0];
    if (!picked) return;
    const limit = model.get("upload_limit");
    if (picked.size > limit) {
      showError(uploadTooLarge(picked.name, picked.size, limit), "", "upload");
    } else {
      const bytes = await picked.arrayBuffer();
      send({ type: "upload", name: picked.name.slice(0, 200), question: question.value || null }, [bytes]);
    }
    file.value = "";
  }

  /** Show `text` next to the control `field` names (the general box for none); clear the others. */
  function showError(text, details, field) {
    for (const [name, box] of Object.entries(errors)) box.show(name === field ? text : "", details);
    error.show(field in errors ? "" : text, details);
    if (text && field === "edit") setEditOpen(true);
  }

  function clickChip(index, shift) {
    const spans = model.get("marks");
    const next = shift && anchor !== null ? markRange(spans, anchor, index, mode) : toggleToken(spans, index, mode);
    anchor = index;
    send({ type: "marks", spans: next });
  }

  function renderTokens() {
    chips = model.get("tokens").map((tok, i) => {
      const chip = h("span", { class: "mll-chip", tabindex: "0", role: "button", "data-testid": "token-chip", "data-index": String(i) }, tok.text);
      chip.addEventListener("click", (event) => clickChip(i, event.shiftKey));
      chip.addEventListener("keydown", (event) => {
        const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
        if (event.key === "Enter" || event.key === " ") clickChip(i, event.shiftKey);
        else if (step) chips[Math.min(chips.length - 1, Math.max(0, i + step))].focus();
        else return;
        event.preventDefault();
        event.stopPropagation();
      });
      return chip;
    });
    chipRow.replaceChildren(...chips);
    anchor = null;
    question.value = model.get("question");
    renderMarks();
  }

  function renderMarks() {
    // update the chips in place, so keyboard focus stays on the chip just toggled
    const spans = model.get("marks");
    const tokens = model.get("tokens");
    for (const [i, chip] of chips.entries()) {
      const span = spanAt(spans, i);
      chip.className = span ? `mll-chip mll-chip-${span.kind}` : "mll-chip";
      chip.setAttribute("aria-pressed", String(Boolean(span)));
      chip.title = span ? `${span.kind} constraint "${spanText(model.get("question"), tokens, span)}"` : "not a constraint";
    }
    const list = model.get("constraints");
    constraints.textContent = list.length ? list.map((c) => `${c.kind}: “${c.text}”`).join(" · ") : "no constraints marked";
  }

  function renderSource() {
    const labels = model.get("examples");
    examples.replaceChildren(
      h("option", { value: "-1", disabled: true, text: "— pick an example —" }),
      ...labels.map((label, i) => h("option", { value: String(i), text: label })),
    );
    examples.value = String(model.get("example"));
    source.textContent = model.get("source");
    const raw = model.get("image");
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = raw && raw.byteLength ? URL.createObjectURL(new Blob([asBytes(raw).slice()], { type: "image/png" })) : null;
    preview.hidden = !previewUrl;
    if (previewUrl) preview.src = previewUrl;
  }

  function renderCorruptions() {
    corruption.replaceChildren(...model.get("corruptions").map((o) => h("option", { value: o.value, text: o.label })));
    corruption.value = model.get("corruption");
  }

  function renderAnswer() {
    const out = model.get("answer");
    if (!out || !out.token) {
      answer.replaceChildren();
      return;
    }
    const edited = out.edits ? ` (model edited ${out.edits}×)` : "";
    const expected = out.expected ? ` · expected “${out.expected}”` : "";
    answer.replaceChildren(
      h("div", { class: "mll-title", "data-testid": "answer-token", text: `answer “${out.token}”${edited}` }),
      h("div", {
        text: `p(answer) clean ${fmt(out.clean_prob)} · corrupted ${fmt(out.corrupted_prob)} with ${out.corruption}${expected} · run #${out.run}`,
      }),
      h("div", { class: "mll-muted", text: `top answers: ${out.top.map(([t, p]) => `${t} ${fmt(p, 2)}`).join(", ")}` }),
    );
  }

  function renderEdits() {
    const layers = model.get("num_layers");
    if (editLayer.options.length !== layers) {
      editLayer.replaceChildren(...Array.from({ length: layers }, (_, i) => h("option", { value: String(i), text: String(i) })));
    }
    editLayer.value = String(model.get("edit_layer"));
    keyToken.textContent = `key: ${model.get("key_token")} token`;
    const edits = model.get("edits");
    undo.disabled = !edits.length;
    active.replaceChildren(
      h("div", { class: "mll-muted", text: edits.length ? "active edits (Undo removes the last):" : "no active edit" }),
      ...edits.map((e) => h("div", { text: `“${e.question}”: ${e.old_answer} → ${e.new_answer} (${e.site} layer ${e.layer}, p ${fmt(e.prob)})` })),
    );
  }

  function renderStatus() {
    const st = model.get("status");
    status.textContent = st === "idle" ? "" : `${st}…`;
    root.dataset.status = st;
    root.dataset.runs = String(model.get("runs_done"));
    showError(model.get("error"), model.get("error_details"), model.get("error_field"));
    const refused = Boolean(model.get("error")) && model.get("error_field") === "question";
    question.setAttribute("aria-invalid", String(refused)); // the chips below are the previous question's
    chipRow.classList.toggle("mll-stale", refused);
    notes.replaceChildren(...model.get("notes").map((text) => h("div", { text: `⚠ ${text}` })));
  }

  const views = {
    tokens: renderTokens,
    question: renderTokens,
    marks: renderMarks,
    constraints: renderMarks,
    examples: renderSource,
    example: renderSource,
    source: renderSource,
    image: renderSource,
    corruptions: renderCorruptions,
    corruption: renderCorruptions,
    answer: renderAnswer,
    num_layers: renderEdits,
    edit_layer: renderEdits,
    edits: renderEdits,
    key_token: renderEdits,
    status: renderStatus,
    error: renderStatus,
    error_field: renderStatus,
    error_details: renderStatus,
    notes: renderStatus,
    runs_done: renderStatus,
  };
  for (const [name, view] of Object.entries(views)) model.on(`change:${name}`, view);
  setMode(mode);
  for (const view of new Set(Object.values(views))) view();
  return () => {
    for (const [name, view] of Object.entries(views)) model.off(`change:${name}`, view);
    if (previewUrl) URL.revokeObjectURL(previewUrl);
  };
}
