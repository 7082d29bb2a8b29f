// yikatong pages: the little script the pages need (ours, no libraries).
// - e-code countdown and renewal before expiry (resident page)
// - progress bar of a CSV enrolment or payout list (console)
// - confirmation prompts on dangerous forms
'use strict';
(function () {
  // Confirmation prompts.
  document.querySelectorAll('form[data-confirm]').forEach(function (f) {
    f.addEventListener('submit', function (e) {
      if (!window.confirm(f.dataset.confirm)) { e.preventDefault(); }
    });
  });

  // E-code: count down, renew ~8 s before expiry. A code is only ever
  // shown while it is valid: once it expires, or the node refuses to renew
  // it (signed out, card lost or locked), the QR and the text go, so a gate
  // never sees an old code as if it were good. A network error or a renewal
  // that does not answer is retried every few seconds.
  var cd = document.getElementById('countdown');
  if (cd) {
    var img = document.getElementById('qr'), text = document.getElementById('code-text'), status = document.getElementById('code-status');
    var expires = Date.parse(cd.dataset.expires);
    var skew = Date.now() + Number(cd.dataset.seconds) * 1000 - expires; // server/client clock difference
    var pending = 0; // when the renewal under way started (0: none)
    var retryAt = 0; // after a failure, no new try before this
    var stopped = false; // the node refused: no more renewals
    var show = function (on) {
      img.style.opacity = '';
      img.style.visibility = on ? '' : 'hidden';
      if (!on) { text.value = ''; }
    };
    var renew = function () {
      var started = Date.now();
      pending = started;
      status.textContent = status.dataset.renewing;
      fetch('/r/code.json', { credentials: 'same-origin', cache: 'no-store' }).then(function (r) {
        return r.json().then(function (j) { return { ok: r.ok, status: r.status, j: j || {} }; },
          function () { return { ok: false, status: r.status, j: {} }; });
      }).then(function (x) {
        if (pending !== started) { return; } // given up on: a newer try is under way
        if (!x.ok && x.status >= 400 && x.status < 500) {
          stopped = true;
          show(false);
          status.textContent = x.j.error || status.dataset.failed;
          if (x.status === 401) { window.location.href = '/r/login?m=expired&next=%2Fr%2F'; }
          return;
        }
        if (!x.ok) { throw { text: x.j.error }; }
        img.src = x.j.qr; text.value = x.j.code;
        expires = Date.parse(x.j.expires_at);
        skew = Date.now() + x.j.seconds * 1000 - expires;
        show(true);
        status.textContent = '';
        document.body.dataset.renewed = String((Number(document.body.dataset.renewed) || 0) + 1);
      }).catch(function (e) {
        if (pending !== started) { return; }
        // The node's own words if it answered, else "no connection" (never
        // the browser's English "Failed to fetch").
        status.textContent = (e && e.text) || status.dataset.offline;
        retryAt = Date.now() + 2000;
      }).finally(function () {
        if (pending === started) { pending = 0; }
      });
    };
    var tick = function () {
      var left = Math.max(0, Math.round((expires + skew - Date.now()) / 1000));
      cd.textContent = String(left);
      if (stopped) { return; }
      var now = Date.now();
      if (left <= 8 && now >= retryAt && (!pending || now - pending > 10000)) { renew(); }
      if (left === 0) {
        show(false);
        status.textContent = status.dataset.expired;
      }
    };
    tick();
    setInterval(tick, 1000);
  }

  // Progress of a background upload (CSV enrolment, payout list): every
  // number in the progress JSON goes to the element with id "job-<name>".
  var job = document.getElementById('job');
  if (job && job.dataset.finished !== 'true') {
    var poll = function () {
      fetch(job.dataset.progress, { credentials: 'same-origin', cache: 'no-store' }).then(function (r) { return r.json(); }).then(function (j) {
        var bar = document.getElementById('job-progress');
        bar.value = j.done;
        bar.max = j.total;
        Object.keys(j).forEach(function (k) {
          var el = document.getElementById('job-' + k);
          if (el && typeof j[k] === 'number' && el !== bar) { el.textContent = j[k]; }
        });
        if (j.finished) { window.location.reload(); } else { setTimeout(poll, 500); }
      }).catch(function () { setTimeout(poll, 2000); });
    };
    setTimeout(poll, 300);
  }
})();
