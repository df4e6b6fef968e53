// Labeling page: ratings, ranking by keyboard or drag-and-drop (ties allowed), submit and skip.
// State is kept per response in its ORIGINAL index (data-index), so the shown order never leaks
// into the stored label.
(function () {
  "use strict";
  const root = document.getElementById("labeler");
  if (!root) return;
  const assignment = root.dataset.assignment;
  const k = Number(root.dataset.k);
  const cards = Array.from(root.querySelectorAll("article.response"));
  const { say, post, goNext } = window.assignmentPage(root);
  const ranks = new Map();  // original index -> rank (1..k)
  let selected = 0;         // position of the selected card
  let busy = root.dataset.answered === "true";

  function cardByIndex(index) {
    return cards.find((c) => c.dataset.index === String(index));
  }

  function select(pos) {
    selected = Math.max(0, Math.min(cards.length - 1, pos));
    cards.forEach((c, i) => c.classList.toggle("selected", i === selected));
    cards[selected].scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  function render() {
    const pool = root.querySelector(".pool .chips");
    root.querySelectorAll(".chip").forEach((chip) => {
      const rank = ranks.get(chip.dataset.index);
      const zone = rank ? root.querySelector(`.rank-rows [data-rank="${rank}"] .chips`) : pool;
      zone.appendChild(chip);
    });
    const counts = new Map();
    ranks.forEach((r) => counts.set(r, (counts.get(r) || 0) + 1));
    cards.forEach((card) => {
      const rank = ranks.get(card.dataset.index);
      const badge = card.querySelector("[data-rank-badge]");
      badge.textContent = rank ? `rank ${rank}${counts.get(rank) > 1 ? " (tie)" : ""}` : "unranked";
      badge.classList.toggle("set", Boolean(rank));
      card.querySelector("[data-rank-select]").value = rank ? String(rank) : "";
    });
  }

  function setRank(index, rank) {
    if (rank) ranks.set(String(index), rank); else ranks.delete(String(index));
    render();
  }

  function setRating(pos, value) {
    const input = cards[pos].querySelector(`.likert input[value="${value}"]`);
    if (input) input.checked = true;
  }

  function collect() {
    const ordered = cards.slice().sort((a, b) => a.dataset.index - b.dataset.index);
    const label = { ranks: [], ratings: [], flags: [] };
    for (const card of ordered) {
      const rank = ranks.get(card.dataset.index);
      const rating = card.querySelector(".likert input:checked");
      if (!rank) throw new Error(`Give response ${card.dataset.letter} a rank.`);
      if (!rating) throw new Error(`Rate response ${card.dataset.letter} from 1 to 7.`);
      const flags = {};
      card.querySelectorAll("input[data-flag]").forEach((box) => {
        if (box.dataset.flag !== "other") flags[box.dataset.flag] = box.checked;
      });
      const other = card.querySelector("[data-other-text]").value.trim();
      const otherBox = card.querySelector('input[data-flag="other"]');
      if (otherBox.checked && !other) throw new Error(`Describe the "other" flag of response ${card.dataset.letter}.`);
      flags.other = otherBox.checked ? other : null;
      label.ranks.push(rank);
      label.ratings.push(Number(rating.value));
      label.flags.push(flags);
    }
    return label;
  }

  async function send(url, body, doneText) {
    if (busy) return;
    busy = true;
    try {
      await post(url, body);
      say(doneText);
      await goNext();
    } catch (err) {
      busy = false;
      say(err.message, true);
    }
  }

  function submit() {
    let label;
    try { label = collect(); } catch (err) { say(err.message, true); return; }
    send(`/api/assignments/${assignment}/label`, label, "Saved.");
  }

  function skip() {
    const choice = document.getElementById("skip-reason").value;
    const reason = choice === "other" ? document.getElementById("skip-other").value.trim() : choice;
    if (!reason) { say("Say why you skip.", true); return; }
    send(`/api/assignments/${assignment}/skip`, { reason }, "Skipped.");
  }

  // Keyboard: letters select, digits rank, Shift+digits rate; typing in a field is left alone.
  document.addEventListener("keydown", (e) => {
    const typing = e.target.matches("input[type=text], textarea, select");
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { e.preventDefault(); submit(); return; }
    if (typing || e.altKey || e.ctrlKey || e.metaKey) return;
    const digit = /^Digit(\d)$/.exec(e.code);
    const letterPos = "abcdefgh".indexOf(e.key);
    if (digit && e.shiftKey) {
      const value = Number(digit[1]);
      if (value >= 1 && value <= 7) setRating(selected, value);
    } else if (digit) {
      const value = Number(digit[1]);
      if (value === 0) setRank(cards[selected].dataset.index, null);
      else if (value <= k) setRank(cards[selected].dataset.index, value);
    } else if (letterPos >= 0 && letterPos < cards.length) {
      select(letterPos);
    } else if (e.key === "j" || e.key === "ArrowDown") {
      select(selected + 1);
    } else if (e.key === "k" || e.key === "ArrowUp") {
      select(selected - 1);
    } else if (e.key === "x") {
      const box = document.getElementById("skip-box");
      box.open = true;
      document.getElementById("skip-reason").focus();
    } else if (e.key === "n") {
      goNext();
    } else {
      return;
    }
    e.preventDefault();
  });

  cards.forEach((card, pos) => {
    card.addEventListener("focus", () => select(pos));
    card.addEventListener("click", () => select(pos));
    card.querySelector("[data-rank-select]").addEventListener("change", (e) => {
      setRank(card.dataset.index, e.target.value ? Number(e.target.value) : null);
    });
  });

  // Drag and drop: chips move between rank rows; dropping two chips in one row ties them.
  root.querySelectorAll(".chip").forEach((chip) => {
    chip.addEventListener("dragstart", (e) => {
      e.dataTransfer.setData("text/plain", chip.dataset.index);
      e.dataTransfer.effectAllowed = "move";
    });
    chip.addEventListener("click", () => select(cards.indexOf(cardByIndex(chip.dataset.index))));
  });
  root.querySelectorAll(".dropzone").forEach((zone) => {
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      const index = e.dataTransfer.getData("text/plain");
      if (cardByIndex(index)) setRank(index, zone.dataset.rank ? Number(zone.dataset.rank) : null);
    });
  });

  document.getElementById("submit").addEventListener("click", submit);
  document.getElementById("skip").addEventListener("click", skip);
  document.getElementById("next").addEventListener("click", goNext);
  document.getElementById("skip-other").addEventListener("focus", () => {
    document.getElementById("skip-reason").value = "other";
  });
  select(0);
  render();
})();
