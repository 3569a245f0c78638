// The console's live view: rows for notifications as the server streams them.
// Built with textContent only, never HTML from the wire.
"use strict";
(function () {
  const rows = document.getElementById("live-rows");
  const status = document.getElementById("live-status");
  if (!rows || !window.EventSource) {
    if (status) status.textContent = "This browser cannot show live updates: see the notifications list.";
    return;
  }
  const cell = (tr, text, href) => {
    const td = document.createElement("td");
    if (href) {
      const a = document.createElement("a");
      a.href = href;
      a.textContent = text;
      td.appendChild(a);
    } else {
      td.textContent = text;
    }
    tr.appendChild(td);
    return td;
  };
  const render = (n) => {
    const tr = document.createElement("tr");
    tr.dataset.id = String(n.id);
    cell(tr, String(n.id), "/console/notifications/" + encodeURIComponent(n.id));
    const time = document.createElement("time");
    time.dateTime = n.received_at;
    time.title = n.received_at;
    time.textContent = n.received_local;
    cell(tr, "").appendChild(time);
    cell(tr, n.provider);
    if (n.out_trade_no) {
      cell(tr, n.out_trade_no, "/console/orders/" + encodeURIComponent(n.out_trade_no));
    } else {
      cell(tr, "");
    }
    const badge = document.createElement("span");
    badge.className = "badge verdict-" + n.verdict;
    badge.textContent = n.verdict;
    cell(tr, "").appendChild(badge);
    cell(tr, n.reason || "");
    return tr;
  };
  status.textContent = "Connecting…";
  const source = new EventSource("/console/live/events?after=" + encodeURIComponent(rows.dataset.after || "0"));
  source.onopen = () => { status.textContent = "Live: new notifications appear at the top."; };
  source.onerror = () => { status.textContent = "Connection lost; reconnecting…"; };
  source.onmessage = (e) => {
    let n;
    try { n = JSON.parse(e.data); } catch (_) { return; }
    const tr = render(n);
    const old = rows.querySelector('tr[data-id="' + String(Number(n.id)) + '"]');
    if (old) {
      old.replaceWith(tr);
    } else {
      rows.insertBefore(tr, rows.firstChild);
      while (rows.children.length > 200) rows.removeChild(rows.lastChild);
    }
  };
})();
