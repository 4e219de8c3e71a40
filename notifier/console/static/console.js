// The template preview: render on demand and whenever the templates directory changes.
// No inline script anywhere (the Content-Security-Policy allows only this file), and
// everything from a render goes into the page as text (textContent), never as markup.
"use strict";

const POLL_MILLISECONDS = 1500;

function preview(form) {
  const name = form.dataset.name;
  const base = "/console/templates/" + encodeURIComponent(name);
  const csrf = form.dataset.csrf;
  const context = document.getElementById("context");
  const state = document.getElementById("state");
  const htmlForm = document.getElementById("html-form");
  let version = form.dataset.version;
  let rendering = false;

  function show(id, text) {
    document.getElementById(id).textContent = text;
  }

  function showProblem(problem) {
    document.getElementById("result").hidden = true;
    document.getElementById("problem").hidden = false;
    show("problem-title", problem.title || "Problem");
    show("problem-status", problem.status ? "(" + problem.status + ")" : "");
    show("problem-detail", problem.detail || "");
    show("problem-json", JSON.stringify(problem, null, 2));
  }

  function showMessage(message) {
    document.getElementById("problem").hidden = true;
    document.getElementById("result").hidden = false;
    const headers = document.getElementById("headers");
    headers.replaceChildren();
    for (const [header, value] of Object.entries(message.headers)) {
      const term = document.createElement("dt");
      term.textContent = header;
      const description = document.createElement("dd");
      description.textContent = value;
      headers.append(term, description);
    }
    show("envelope", message.envelope.from + " → " + message.envelope.to.join(", "));
    show("text", message.text);
    show("raw", message.raw);
    // The HTML part is fetched into the sandboxed frame by a form post: the frame's
    // document then carries its own policy (its styles inline, no script at all).
    const hasHtml = message.html !== null;
    document.getElementById("html-part").hidden = !hasHtml;
    if (hasHtml) {
      document.getElementById("html-context").value = context.value;
      htmlForm.submit();
    }
  }

  async function render() {
    if (rendering) return;
    rendering = true;
    state.textContent = "rendering…";
    try {
      const response = await fetch(base + "/preview", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: context.value,
        credentials: "same-origin",
      });
      const answer = await response.json();
      if (!response.ok) {
        // The console refused the request itself (signed out, stale page).
        showProblem(answer);
      } else if (answer.problem) {
        showProblem(answer.problem);
      } else {
        showMessage(answer.message);
      }
      state.textContent = "rendered at " + new Date().toLocaleTimeString();
    } catch (error) {
      state.textContent = "could not render: " + error;
    } finally {
      rendering = false;
    }
  }

  async function poll() {
    try {
      const response = await fetch(base + "/version", { credentials: "same-origin" });
      if (response.ok) {
        const answer = await response.json();
        if (answer.version !== version) {
          version = answer.version;
          await render();
        }
      }
    } catch (error) {
      state.textContent = "lost contact with the service; still trying";
    }
    window.setTimeout(poll, POLL_MILLISECONDS);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    render();
  });
  document.getElementById("reset").addEventListener("click", () => {
    context.value = document.getElementById("example-data").content.textContent;
    render();
  });
  render();
  window.setTimeout(poll, POLL_MILLISECONDS);
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("preview-form");
  if (form) preview(form);
});
