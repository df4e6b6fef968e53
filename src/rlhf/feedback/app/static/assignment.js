// What every labeling page shares: status messages, CSRF-protected JSON posts, and moving to the next
// assignment of the project. `window.assignmentPage(root)` -> { say, post, goNext } for the page's root element
// (its data-project names the project).
(function () {
  "use strict";
  window.assignmentPage = function (root) {
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    const status = document.getElementById("status");

    function say(text, isError) {
      status.textContent = text;
      status.classList.toggle("error", Boolean(isError));
    }

    async function post(url, body) {
      const response = await fetch(url, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body),
      });
      const data = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(data.detail ? String(data.detail) : `server said ${response.status}`);
      return data;
    }

    async function goNext() {
      try {
        const next = await post(`/api/projects/${encodeURIComponent(root.dataset.project)}/next`, {});
        window.location.assign(next.url || "/projects");
      } catch (err) {
        say(err.message, true);
      }
    }

    return { say, post, goNext };
  };
})();
