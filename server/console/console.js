// Live progress on a rollout page: poll the console's JSON every second and redraw the
// status, the counts and each wave's bar. No framework, no external script.
(function () {
  "use strict";
  const root = document.querySelector("[data-rollout-progress]");
  if (!root) { return; }
  const url = root.getAttribute("data-rollout-progress");
  function pct(n, total) { return (100 * n / Math.max(total, 1)).toFixed(1) + "%"; }
  function draw(r) {
    const status = document.getElementById("rollout-status");
    status.textContent = r.status;
    status.className = "status " + r.status;
    document.getElementById("rollout-reason").textContent = r.reason || "";
    document.getElementById("rollout-progress").textContent =
      r.done + " / " + r.devices + " devices committed (" + r.progress_pct + "%), " +
      r.failed + " failed, wave " + r.current_wave + " of " + r.wave_count;
    const sent = document.getElementById("rollout-bytes");
    if (sent && r.bytes_text) { sent.textContent = "Bytes sent " + r.bytes_text; }
    const total = document.querySelector("#total-bar");
    if (total) {
      total.querySelector(".ok").style.width = pct(r.done, r.devices);
      total.querySelector(".bad").style.width = pct(r.failed, r.devices);
    }
    r.waves.forEach(function (w) {
      const row = document.getElementById("wave-" + w.index);
      if (!row) { return; }
      row.querySelector(".wave-status").textContent = w.status;
      row.querySelector(".wave-count").textContent = w.done + " / " + w.devices;
      row.querySelector(".ok").style.width = pct(w.done, w.devices);
      row.querySelector(".bad").style.width = pct(w.failed, w.devices);
    });
    const active = ["running", "paused", "aborting"].indexOf(r.status) >= 0;
    const buttons = {pause: r.status === "running", resume: r.status === "paused",
                     abort: r.status === "running" || r.status === "paused",
                     "switch": r.staged > 0 && (r.status === "running" || r.status === "paused")};
    const switcher = document.getElementById("btn-switch");
    if (switcher) { switcher.textContent = "Switch " + r.staged + " staged now"; }
    Object.keys(buttons).forEach(function (k) {
      const b = document.getElementById("btn-" + k);
      if (b && root.getAttribute("data-operator") === "1") { b.disabled = !buttons[k]; }
    });
    return active;
  }
  function poll() {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (resp) { return resp.ok ? resp.json() : null; })
      .then(function (r) { if (r && draw(r) === false) { return; } setTimeout(poll, 1000); })
      .catch(function () { setTimeout(poll, 2000); });
  }
  setTimeout(poll, 1000);
})();
