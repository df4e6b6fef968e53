// Clip-pair page: one key answers and moves on. Left/right are the SHOWN sides; the label is sent in the
// task's original response order (data-left / data-right hold the original indices).
(function () {
  "use strict";
  const root = document.getElementById("clip-labeler");
  if (!root) return;
  const assignment = root.dataset.assignment;
  const left = Number(root.dataset.left);
  const right = Number(root.dataset.right);
  const { say, post, goNext } = window.assignmentPage(root);
  let busy = root.dataset.answered === "true";

  function ranksFor(better) {  // original order; the better clip gets rank 1, equal clips both get 1
    const ranks = [1, 1];
    if (better === "left") ranks[right] = 2;
    if (better === "right") ranks[left] = 2;
    return ranks;
  }

  async function answer(choice) {
    if (busy) return;
    busy = true;
    try {
      if (choice === "cant") {
        await post(`/api/assignments/${assignment}/skip`, { reason: "can't tell" });
      } else {
        await post(`/api/assignments/${assignment}/label`, { ranks: ranksFor(choice) });
      }
      say(choice === "cant" ? "Skipped: can't tell." : "Saved.");
      await goNext();
    } catch (err) {
      busy = false;
      say(err.message, true);
    }
  }

  const KEYS = { ArrowLeft: "left", "1": "left", ArrowRight: "right", "2": "right", "=": "equal", e: "equal",
                 c: "cant", "?": "cant" };
  document.addEventListener("keydown", (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey || e.target.matches("input, textarea, select")) return;
    if (e.key === "n") { e.preventDefault(); goNext(); return; }
    const choice = KEYS[e.key];
    if (!choice) return;
    e.preventDefault();
    answer(choice);
  });
  root.querySelectorAll("button[data-answer]").forEach((button) => {
    button.addEventListener("click", () => answer(button.dataset.answer));
  });
  document.getElementById("next").addEventListener("click", goNext);
})();
