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

  // E-code: count down, renew ~8 s before expiry.
  var cd = document.getElementById('countdown');
  if (cd) {
    var img = document.getElementById('qr'), text = document.getElementById('code-text'), status = document.getElementById('code-status');
    var expires = Date.parse(cd.dataset.expires);
    var skew = Date.now() + Number(cd.dataset.seconds) * 1000 - expires; // server/client clock difference
    var renewing = false;
    var renew = function () {
      renewing = true;
      status.textContent = status.dataset.renewing;
      fetch('/r/code.json', { credentials: 'same-origin', cache: 'no-store' }).then(function (r) {
        return r.json().then(function (j) { return { ok: r.ok, j: j }; });
      }).then(function (x) {
        if (!x.ok) { throw new Error(x.j.error || 'error'); }
        img.src = x.j.qr; text.value = x.j.code;
        expires = Date.parse(x.j.expires_at);
        skew = Date.now() + x.j.seconds * 1000 - expires;
        status.textContent = '';
        document.body.dataset.renewed = String((Number(document.body.dataset.renewed) || 0) + 1);
      }).catch(function (e) {
        status.textContent = status.dataset.failed + ' ' + e.message;
        img.style.opacity = '0.15';
      }).finally(function () { renewing = false; });
    };
    var tick = function () {
      var left = Math.max(0, Math.round((expires + skew - Date.now()) / 1000));
      cd.textContent = String(left);
      if (left <= 8 && !renewing) { renew(); }
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
