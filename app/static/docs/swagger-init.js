// Starts Swagger UI on GET /docs (a same-origin file rather than an inline script, so a strict
// Content-Security-Policy allows it). The options are FastAPI's defaults for its own /docs page.
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
