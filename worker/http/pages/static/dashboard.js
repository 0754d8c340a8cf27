/* ftdeploy dashboard: the live parts, as progressive enhancement (every page works without it).
 * - [data-live]: re-read the element's fragment when the change stream names its tenant (or any
 *   tenant, when it names none), every data-every seconds, and stop once [data-final] appears
 *   if data-until-final is set.
 * - form[data-preview]: show the resulting split as the action's values change.
 * - template[data-options-for]: a re-read part's options for a form's list (the promote form's
 *   versions), put into the list without losing the user's choice.
 * - [data-live-split]: a re-read part's live split; an open preview whose "Now" differs from it
 *   is read again, so that its "Now" (and its "After") follow the live update.
 * - <time datetime>: shown in the viewer's time zone; the title keeps UTC.
 * - the chart: the readout says which versions served at the hovered or focused time.
 * No inline script anywhere (CSP: script-src 'self'). */
(function () {
  "use strict";

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) return;
      el.textContent = when.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "numeric",
        hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
      });
    });
  }

  function chartReadout(root) {
    root.querySelectorAll("svg.chart .column").forEach(function (column) {
      column.setAttribute("tabindex", "0");
      var show = function () {
        var out = document.getElementById("chart-readout");
        var title = column.querySelector("title");
        if (out && title) {
          var start = new Date(column.dataset.start).toLocaleString();
          var served = title.textContent.split(": ").slice(1).join(": ");
          out.textContent = "From " + start + " (local time): " + served;
        }
      };
      column.addEventListener("mouseenter", show);
      column.addEventListener("focus", show);
    });
  }

  // A re-read part may carry the options of a form's list (<template data-options-for=ID>):
  // they replace the list's when they differ (a version's status or traffic changed), and the
  // option the user chose stays chosen while it exists. Other fields are not touched.
  function signature(options) {
    return Array.prototype.map.call(options, function (o) {
      return o.value + "\u0000" + o.textContent;
    }).join("\u0001");
  }

  function formOptions(root) {
    root.querySelectorAll("template[data-options-for]").forEach(function (template) {
      var select = document.getElementById(template.dataset.optionsFor);
      if (!select || select.tagName !== "SELECT") return;
      var fresh = template.content.querySelectorAll("option");
      if (signature(select.options) === signature(fresh)) return;
      var chosen = select.value;
      select.replaceChildren.apply(select, Array.prototype.map.call(fresh, function (o) {
        return document.importNode(o, true);
      }));
      if (Array.prototype.some.call(select.options, function (o) { return o.value === chosen; })) {
        select.value = chosen;
      }
    });
  }

  // Each preview form's update (previews()), for a re-read live split to redo an open preview:
  // its "Now" is the split it was computed against, and its "After" follows from that.
  var previewUpdates = new WeakMap();
  function openPreviews(root) {
    var live = root.querySelector("[data-live-split] .split-text");
    if (!live) return;
    document.querySelectorAll("form[data-preview]").forEach(function (form) {
      var now = form.querySelector(".preview [data-now] .split-text");
      var update = previewUpdates.get(form);
      if (now && update && now.textContent !== live.textContent) update();
    });
  }

  function enhance(root) {
    localTimes(root); chartReadout(root); formOptions(root); openPreviews(root);
  }

  var busy = new WeakMap();
  function refresh(el) {
    if (busy.get(el)) { el.dataset.again = "1"; return; }
    busy.set(el, true);
    fetch(el.dataset.live, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return null; }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          el.innerHTML = html;
          enhance(el);
          el.dataset.refreshed = String(Date.now());
        }
      })
      .catch(function () { /* the next change or tick tries again */ })
      .finally(function () {
        busy.set(el, false);
        if (el.dataset.again) { delete el.dataset.again; refresh(el); }
      });
  }

  function watch(el) {
    var every = parseFloat(el.dataset.every || "0");
    if (!every) return;
    var timer = setInterval(function () {
      if (el.hasAttribute("data-until-final") && el.querySelector("[data-final]")) {
        clearInterval(timer);
        // The operation landed: show what it changed at once.
        document.querySelectorAll("[data-live]").forEach(function (other) {
          if (other !== el) refresh(other);
        });
        return;
      }
      refresh(el);
    }, every * 1000);
  }

  function stream(lives) {
    if (!lives.length || !window.EventSource) return;
    var source = new EventSource("/dashboard/stream");
    // A change committed between the page's render and the stream's subscription (or while it
    // was reconnecting) has no event of its own: re-read once each time the stream is ready.
    source.addEventListener("ready", function () { lives.forEach(refresh); });
    source.addEventListener("change", function (event) {
      var tenant = null;
      try { tenant = JSON.parse(event.data).tenant; } catch (e) { return; }
      lives.forEach(function (el) {
        if (!el.dataset.tenant || el.dataset.tenant === tenant) refresh(el);
      });
    });
  }

  function previews() {
    document.querySelectorAll("form[data-preview]").forEach(function (form) {
      var slot = form.querySelector(".preview-slot");
      if (!slot) return;
      var pending = null;
      var latest = 0;  // answers can arrive out of order: only the newest request's is shown
      var update = function () {
        var ticket = ++latest;
        var params = new URLSearchParams();
        params.set("action", form.dataset.action);
        ["version", "percent"].forEach(function (name) {
          var field = form.elements.namedItem(name);
          if (field) params.set(name, field.value);
        });
        fetch(form.dataset.preview + "?" + params.toString(), { credentials: "same-origin" })
          .then(function (response) { return response.ok ? response.text() : null; })
          .then(function (html) { if (html !== null && ticket === latest) slot.innerHTML = html; })
          .catch(function () {});
      };
      previewUpdates.set(form, update);
      form.addEventListener("input", function (event) {
        if (event.target.name === "reason") return;
        clearTimeout(pending);
        pending = setTimeout(update, 150);
      });
      form.addEventListener("focusin", function once() {
        form.removeEventListener("focusin", once);
        update();
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    enhance(document);
    var lives = Array.prototype.slice.call(document.querySelectorAll("[data-live]"));
    lives.forEach(watch);
    stream(lives.filter(function (el) { return !el.hasAttribute("data-until-final"); }));
    previews();
    document.documentElement.dataset.enhanced = "1";
  });
})();
